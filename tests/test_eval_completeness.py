"""Evaluations check completeness against what they evaluate (issue 18): score-jcb
against the item count and required fields of every record, eval-cxr / eval-findings
against the gold set; partial inputs stop unless allowed, and then are marked."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ctray.cli import main
from ctray.pipeline.ray_session import check_submitted_output, runtime_working_dir
from ctray.tasks.cxr.schema import OBSERVATIONS

REPO = Path(__file__).resolve().parents[1]


def _mcqa(root: Path, model: str, records: list[dict]) -> None:
    d = root / "CLR" / "MCQA" / model
    d.mkdir(parents=True)
    (d / "one_shot.json").write_text(json.dumps(records), encoding="utf-8")


def test_jcb_score_stops_on_a_cut_file_or_a_record_without_generated(tmp_path, capsys):
    full = [{"sample_id": f"Q{i}", "generated": i % 2, "gold": 0} for i in range(10)]
    gen = tmp_path / "generated"
    _mcqa(gen, "full", full)
    _mcqa(gen, "cut", full[:4])  # cut at a line boundary: 4 of 10 items
    holed = [dict(r) for r in full]
    del holed[5]["generated"]
    _mcqa(gen, "holed", holed)
    args = ["score-jcb", "--generated", str(gen), "--output", str(tmp_path / "s"),
            "--set", "bootstrap=0", "--set", "chart=false"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ctray: incomplete outputs"), err
    assert "CLR/MCQA/cut/one_shot.json: 4 of 10 items" in err[0]
    assert "CLR/MCQA/holed/one_shot.json: 1 record(s) lack one of ['generated', 'gold']" in err[0]
    assert not (tmp_path / "s" / "table4.md").exists()

    assert main(args + ["--allow-incomplete"]) == 0
    table = pd.read_csv(tmp_path / "s" / "table4.csv").set_index("model")
    # full: 5 of 10 right; cut: 2 of 4 (marked); holed: 5 of its 9 complete records.
    assert table.loc["full", "ExamQA"] == "50.0"
    assert table.loc["cut", "ExamQA"] == "50.0*"
    assert table.loc["holed", "ExamQA"] == "55.6*"
    md = (tmp_path / "s" / "table4.md").read_text(encoding="utf-8")
    assert "cut ExamQA: 4 of 10 items" in md and "holed ExamQA: 9 of 10 items" in md
    scores = pd.read_csv(tmp_path / "s" / "scores.csv").set_index("model")
    assert scores.loc["cut", "expected_n"] == 10 and not scores.loc["cut", "complete"]


def _cxr_labels(path: Path, ids: list[str], value: float = 1.0) -> str:
    df = pd.DataFrame({"uid": ids, **{o: [value] * len(ids) for o in OBSERVATIONS}})
    df.to_csv(path, index=False)
    return str(path)


def test_cxr_eval_refuses_a_labeler_covering_part_of_the_gold_set(tmp_path, capsys):
    gold = _cxr_labels(tmp_path / "gold.csv", [f"{i:04d}" for i in range(120)])
    # Ids with leading zeros: read as written, so the 6 matching ids do match.
    part = _cxr_labels(tmp_path / "part.csv", [f"{i:04d}" for i in range(6)])
    args = ["eval-cxr", "--gold", gold, "--set", f"labelers=[{part}]",
            "--output", str(tmp_path / "e")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "part has 6 of 120" in err[0] and "--allow-partial" in err[0], err
    assert main(args + ["--allow-partial"]) == 0
    out = capsys.readouterr().out
    assert "part 1.0000 (coverage 6/120 gold reports)" in out
    assert "coverage 6/120 gold reports (PARTIAL" in (tmp_path / "e" / "report.md").read_text()
    manifest = json.loads((tmp_path / "e" / "manifest.json").read_text())
    assert manifest["coverage"] == {"scored": 6, "gold": 120, "per_labeler": {"part": 6},
                                    "partial": True}


def test_findings_eval_refuses_partial_predictions(tmp_path, capsys):
    from ctray.tasks.findings.schema import FINDING_COLUMNS

    gold = pd.read_csv(REPO / "ctray" / "data" / "sample_labels.csv")
    ids = gold["VolumeName"].tolist()[:5]
    pred = pd.DataFrame({"report_id": ids, **{c: [0] * len(ids) for c in FINDING_COLUMNS}})
    pred.to_csv(tmp_path / "p.csv", index=False)
    args = ["eval-findings", "--config", str(REPO / "configs" / "eval_findings.yaml"),
            "--predictions", str(tmp_path / "p.csv"), "--output", str(tmp_path / "e"),
            "--set", "gold.id_pattern=null", "--set", "compare_to=null",
            "--set", f"gold.path={REPO / 'ctray' / 'data' / 'sample_labels.csv'}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"has 5 of {len(gold)}" in err and "--allow-partial" in err, err
    assert main(args + ["--allow-partial"]) == 0
    assert f"(coverage 5/{len(gold)} gold reports)" in capsys.readouterr().out


def test_a_submitted_job_refuses_an_output_inside_rays_temporary_working_dir(tmp_path):
    pkg = tmp_path / "session" / "runtime_resources" / "working_dir_files" / "_ray_pkg_ab12"
    (pkg / "configs").mkdir(parents=True)
    assert runtime_working_dir(str(pkg / "configs")) == str(pkg.resolve())
    assert runtime_working_dir(str(tmp_path)) is None
    for output in ("runs/label_cxr", str(pkg / "runs")):
        try:
            check_submitted_output(output, cwd=str(pkg))
        except Exception as exc:  # noqa: BLE001 - the type is checked below
            assert type(exc).__name__ == "UserError" and "temporary working directory" in str(exc)
        else:
            raise AssertionError(f"{output} accepted")
    check_submitted_output("s3://bucket/out", cwd=str(pkg))
    check_submitted_output(str(tmp_path / "shared" / "out"), cwd=str(pkg))
    check_submitted_output("runs/x", cwd=str(tmp_path))  # not a submitted job
