"""The review database (SQLite, WAL): queues, all-or-nothing saves, concurrent
reviewers, gold export read by eval-cxr / eval-findings, Cohen's kappa; and the upload
readers' errors. No Ray: these run in a second."""

from __future__ import annotations

import concurrent.futures as cf
import math
import sqlite3

import pandas as pd
import pytest

from ctray.review.inputs import read_label_table, read_reports
from ctray.review.store import ReviewError, ReviewStore
from ctray.review.label_sets import TASKS
from ctray.tasks.cxr.rules import CxrRuleLabeler
from ctray.tasks.cxr.schema import OBSERVATIONS
from review_fixtures import EXPECTED_DIFF, REPORTS, report_text, reports_csv, second_opinion


def _labels(fn) -> dict[str, dict]:
    out = {}
    for rid in REPORTS:
        labels = CxrRuleLabeler().label(report_text(rid)).labels
        out[rid] = {o: (None if math.isnan(v) else v) for o, v in fn(labels).items()}
    return out


@pytest.fixture
def store(tmp_path):
    store = ReviewStore(tmp_path / "review.db")
    reports = pd.DataFrame({"report_id": list(REPORTS), "text": [report_text(r) for r in REPORTS]})
    counts = store.create_queue("q1", "cxr", "rules", "second", reports,
                                _labels(lambda x: x), _labels(second_opinion))
    assert counts == {"compared": 6, "disagreements": 3}
    return store


def test_queue_sorted_by_differing_observations_and_wal(store):
    items = store.items("q1")
    assert [(i["report_id"], i["n_diff"]) for i in items] == list(EXPECTED_DIFF.items())
    con = sqlite3.connect(store.path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(ReviewError) as err:
        store.create_queue("q1", "cxr", "a", "b", pd.DataFrame({"report_id": [], "text": []}),
                           {}, {})
    assert err.value.status == 409


def test_invalid_values_write_nothing(store):
    good = {"Pleural Effusion": 1, "Cardiomegaly": -1}
    for values, status in [({**good, "Edema": 2}, 422), ({**good, "Nonsense": 1}, 422),
                           ({**good, "Edema": "maybe"}, 422), ({}, 422)]:
        with pytest.raises(ReviewError) as err:
            store.save("q1", "r3", "alice", values)
        assert err.value.status == status
    with pytest.raises(ReviewError) as err:
        store.save("q1", "r3", "", good)
    assert err.value.status == 422
    with pytest.raises(ReviewError) as err:
        store.save("q1", "r1", "alice", good)  # r1 is not a disagreement
    assert err.value.status == 404
    assert store.labels("q1").empty
    store.save("q1", "r3", "alice", {**good, "Edema": None})
    saved = store.labels("q1")
    assert len(saved) == 3 and saved["value"].isna().sum() == 1


def test_concurrent_reviewers_keep_every_row(store):
    """8 reviewers save every item at once, each twice: every row survives, and a
    reviewer's second save replaces only their own values."""
    keys = list(OBSERVATIONS)

    def review(k: int) -> None:
        for rid in EXPECTED_DIFF:
            store.save("q1", rid, f"rev{k}", {o: 0 for o in keys})
            store.save("q1", rid, f"rev{k}", {o: (1 if i % 8 == k else 0)
                                              for i, o in enumerate(keys)})

    with cf.ThreadPoolExecutor(8) as pool:
        list(pool.map(review, range(8)))
    rows = store.labels("q1")
    assert len(rows) == 8 * len(EXPECTED_DIFF) * len(keys)
    assert not rows.duplicated(["report_id", "observation", "reviewer"]).any()
    for k in range(8):
        mine = rows[(rows["reviewer"] == f"rev{k}") & (rows["report_id"] == "r3")]
        positive = set(mine.loc[mine["value"] == 1, "observation"])
        assert positive == {o for i, o in enumerate(keys) if i % 8 == k}
    assert (rows["updated_at"] >= rows["created_at"]).all()


def test_gold_export_is_read_by_cxr_eval(store, tmp_path):
    from ctray.tasks.cxr.eval_job import LabelsInput, read_labels

    store.save("q1", "r3", "alice", {"Cardiomegaly": 1, "Consolidation": -1})
    store.save("q1", "r3", "bob", {"Cardiomegaly": 1, "Consolidation": 1})
    store.save("q1", "r3", "carol", {"Cardiomegaly": 0, "Consolidation": -1})
    store.save("q1", "r2", "alice", {"Pneumonia": -1})
    store.save("q1", "r2", "bob", {"Pneumonia": 1})  # tie: the latest save wins
    path = tmp_path / "gold.csv"
    store.gold("q1").to_csv(path, index=False)
    gold = read_labels(LabelsInput(path=str(path)), "gold")
    assert list(gold.index) == ["r2", "r3"]
    assert gold.loc["r3", "Cardiomegaly"] == 1.0 and gold.loc["r3", "Consolidation"] == -1.0
    assert gold.loc["r2", "Pneumonia"] == 1.0
    assert math.isnan(gold.loc["r2", "Edema"])


def test_kappa_matches_sklearn(store):
    from sklearn.metrics import cohen_kappa_score

    a = {"r3": 1, "r2": 0, "r5": 1}
    b = {"r3": 1, "r2": 0, "r5": 0}
    for rid in EXPECTED_DIFF:
        store.save("q1", rid, "alice", {"Edema": a[rid], "Fracture": 0})
        store.save("q1", rid, "bob", {"Edema": b[rid], "Fracture": 0})
    store.save("q1", "r3", "carol", {"Edema": -1})  # one report seen by three
    out = store.kappa("q1")
    edema = next(o for o in out["observations"] if o["observation"] == "Edema")
    pairs = [(list(a.values()), list(b.values())), ([1], [-1]), ([1], [-1])]
    want = sum(cohen_kappa_score([str(x) for x in p], [str(x) for x in q]) * len(p)
               for p, q in pairs if len(set(p) | set(q)) > 1) / sum(
        len(p) for p, q in pairs if len(set(p) | set(q)) > 1)
    assert edema["kappa"] == pytest.approx(want)
    assert edema["reports"] == 3 and edema["pairs"] == 3
    fracture = next(o for o in out["observations"] if o["observation"] == "Fracture")
    assert fracture["kappa"] is None and fracture["agreement"] == 1.0  # one class: undefined
    assert out["reports_with_several_reviewers"] == 3


def test_ctrate_gold_is_read_by_findings_eval(tmp_path):
    from ctray.tasks.findings.eval_job import GoldInput, read_gold
    from ctray.tasks.findings.schema import FINDING_COLUMNS

    store = ReviewStore(tmp_path / "r.db")
    reports = pd.DataFrame({"report_id": ["v1", "v2"], "text": ["両側に胸水を認める。", "x"]})
    a = {"v1": {c: 0 for c in FINDING_COLUMNS} | {"pleural_effusion": 1},
         "v2": {c: 0 for c in FINDING_COLUMNS}}
    b = {"v1": {c: 0 for c in FINDING_COLUMNS}, "v2": {c: 0 for c in FINDING_COLUMNS}}
    store.create_queue("ct", "ctrate", "rules", "gold", reports, a, b)
    with pytest.raises(ReviewError):
        store.save("ct", "v1", "alice", {"pleural_effusion": -1})  # binary task
    store.save("ct", "v1", "alice", {c: 0 for c in FINDING_COLUMNS} | {"pleural_effusion": 1})
    path = tmp_path / "gold.csv"
    store.gold("ct").to_csv(path, index=False)
    gold, _ = read_gold(GoldInput(path=str(path)))
    assert gold.loc["v1", "pleural_effusion"] == 1 and gold.loc["v1"].sum() == 1


def test_upload_readers_name_the_problem():
    data = reports_csv().encode()
    reports = read_reports(data, "r.csv", 100, 1000)
    assert list(reports["report_id"]) == list(REPORTS)
    assert reports.loc[4, "text"] == report_text("r5")
    cases = [
        (b"", "empty"), ("uid,findings\nr1,caf\xe9\n".encode("latin-1"), "not UTF-8"),
        (b"name,text\nr1,x\n", "no id column"), (b"uid,body\nr1,x\n", "no report text"),
        (b"uid,text\nr1,x\nr1,y\n", "duplicate id"), (b"PAR1garbage", "Parquet"),
    ]
    for raw, words in cases:
        with pytest.raises(ReviewError, match=words):
            read_reports(raw, "r.csv", 100, 1000)
    with pytest.raises(ReviewError, match="at most 2") as err:
        read_reports(data, "r.csv", 2, 1000)
    assert err.value.status == 413
    with pytest.raises(ReviewError, match="limit is 10") as err:
        read_reports(data, "r.csv", 100, 10)
    assert err.value.status == 413
    header = ",".join(OBSERVATIONS)
    with pytest.raises(ReviewError, match="row 2, column 'Edema'"):
        read_label_table(f"report_id,{header}\nr1,{',' * 5}2{',' * 8}\n".encode(), "g.csv",
                         TASKS["cxr"], 10)
    with pytest.raises(ReviewError, match="missing label column"):
        read_label_table(b"report_id,Edema\nr1,1\n", "g.csv", TASKS["cxr"], 10)
