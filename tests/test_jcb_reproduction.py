"""score-jcb on the released GPT-4o / GPT-5 outputs reproduces the released results/
JSON (to 1e-6) and the paper's Table 4 (to one decimal). Needs ../shared/data."""

import csv
import json
import unicodedata

import pytest

from ctray.tasks.jcb.metrics import score_records
from ctray.tasks.jcb.registry import get_setting
from ctray.tasks.jcb.release import read_records
from ctray.tasks.jcb.score_job import JcbScoreConfig, run_jcb_score
from conftest import shared_file

# Table 4 of the paper (one-shot), GPT-4o and GPT-5 rows.
PAPER = {
    "gpt-4o": [92.4, 44.1, 28.6, 33.7, 35.3, 38.7, 50.8, 41.2, 51.2, 76.8, 69.7, 80.0, 86.4],
    "gpt-5": [94.5, 59.1, 33.7, 29.1, 25.6, 34.1, 45.4, 33.2, 64.9, 78.4, 78.0, 62.1, 86.2],
}
LABELS = ["ExamQA", "CCA", "MR", "HS-PN", "HS-DS", "IRS", "CTS", "NER-D", "NER-Med",
          "RE-Ent", "RE-Time", "DC-TMN", "DC-ADE"]
# Documented exceptions (docs/jclinicalbench.md): MR files whose lists were cut off by
# max_tokens score differently from the release; no per-document rule we found explains
# those numbers (the gpt-4o one-shot file, with 7 truncated lists, matches exactly).
MR_EXCEPTIONS = {"CLR/MR/gpt-4o/zero_shot.json", "CLR/MR/gpt-5/one_shot.json",
                 "CLR/MR/gpt-5/zero_shot.json"}


@pytest.mark.slow
@pytest.mark.shared_data
def test_released_outputs_reproduce_results_and_table4(tmp_path):
    generated = shared_file("j-clinicalbench", "generated")
    reference = shared_file("j-clinicalbench", "results")
    out = tmp_path / "score"
    summary = run_jcb_score(JcbScoreConfig(generated=str(generated), run={"output": str(out)},
                                           reference=str(reference), bootstrap=0, chart=False))
    with open(out / "reference_check.csv", encoding="utf-8") as fh:
        checks = list(csv.DictReader(fh))
    # Every released file with a released result is compared (ablation folders have none).
    assert len(checks) == 55 == summary["reference_checked"]
    assert all(c["same_keys"] == "True" for c in checks)
    off = {c["file"] for c in checks if float(c["max_abs_diff"]) > 1e-6}
    assert off == MR_EXCEPTIONS
    with open(out / "table4.csv", encoding="utf-8") as fh:
        rows = {r["model"]: r for r in csv.DictReader(fh)}
    for model, values in PAPER.items():
        for label, value in zip(LABELS, values):
            if model == "gpt-5" and label == "MR":
                assert rows[model][label] == "34.0"  # the documented MR exception (33.7)
                continue
            assert float(rows[model][label]) == value, (model, label)
    # The other five models appear from results/ (no released outputs to score).
    assert "llm-jp-3-8x13b-instruct3 (released)" in rows
    assert rows["llm-jp-3-8x13b-instruct3 (released)"]["ExamQA"] == "61.3"


@pytest.mark.shared_data
def test_ade_all_positive_baseline_scores_f1_0_9045():
    path = shared_file("j-clinicalbench", "generated", "CLU", "DC_ADE", "gpt-4o", "zero_shot.json")
    rows = [dict(r, generated="1") for r in read_records(path)]
    result, _ = score_records(rows, get_setting("DC_ADE"))
    assert round(result["f1"], 4) == 0.9045 and result["recall"] == 1.0


@pytest.mark.shared_data
def test_ner_sample_is_the_pandas_sample_of_test_cr_plus_test_rr():
    from ctray.tasks.jcb.data import load_items

    bench = shared_file("j-clinicalbench", "benchmarks")
    released = read_records(shared_file("j-clinicalbench", "generated", "CLU", "NER_Disease",
                                        "gpt-4o", "one_shot.json"))
    items = load_items(bench, get_setting("NER_Disease"), "one_shot")
    assert [it["record"]["annotated_sentence"] for it in items] == \
        [r["annotated_sentence"] for r in released]
    assert [it["record"]["ID"] for it in items] == [r["ID"] for r in released]


@pytest.mark.shared_data
@pytest.mark.parametrize("name", ["MCQA", "IRS", "HS_DS", "HS_PN", "CTS", "CCA", "DC_TMN",
                                  "DC_ADE", "RE_Time"])
def test_generated_records_match_the_release_fields_and_items(name):
    """generate-jcb writes the same fields, items and gold values as the release."""
    from ctray.tasks.jcb.data import load_items

    setting = get_setting(name)
    bench = shared_file("j-clinicalbench", "benchmarks")
    for shot in ("zero_shot", "one_shot"):
        released = read_records(shared_file("j-clinicalbench", "generated", setting.group,
                                            setting.name, "gpt-4o", f"{shot}.json"))
        items = load_items(bench, setting, shot)
        assert list(items[0]["record"]) == list(released[0]), (name, shot)
        key = next(k for k in released[0] if k not in (setting.generated_field,))
        # HS-PN: the released ids are decomposed (NFD-like) file names; compare after NFKC.
        norm = (lambda v: unicodedata.normalize("NFKC", v)) if setting.data.normalize_id else str
        mine = sorted(norm(json.dumps(it["record"][key], ensure_ascii=False)) for it in items)
        theirs = sorted(norm(json.dumps(r[key], ensure_ascii=False)) for r in released)
        assert mine == theirs, (name, shot)
