"""label-cxr through the Ray job runner: CheXpert-layout output, evidence, row errors,
resume, the generic one-column CSV, the LLM labeler with the fake backend; the CLI."""

from __future__ import annotations

import csv
import json
import math
from importlib import resources

import pandas as pd
import pytest

from ctray.tasks.cxr.schema import OBSERVATIONS

SAMPLE = resources.files("ctray") / "data" / "sample_cxr_reports.csv"


def _corpus_with_problems(tmp_path) -> str:
    df = pd.read_csv(SAMPLE, dtype=str)
    extra = pd.DataFrame([{"uid": "empty", "findings": "", "impression": ""},
                          {"uid": "only-impression", "findings": "",
                           "impression": "No new focal consolidation."}])
    path = tmp_path / "reports.csv"
    pd.concat([df, extra], ignore_index=True).to_csv(path, index=False)
    return str(path)


def _run(cfg_dict):
    from ctray.tasks.cxr.label_job import LabelCxrConfig, run_label_cxr

    return run_label_cxr(LabelCxrConfig.model_validate(cfg_dict))


def test_label_cxr_rules_job_layout_errors_and_resume(ray_local, tmp_path):
    from ctray.tasks.cxr.rules import CxrRuleLabeler

    corpus = _corpus_with_problems(tmp_path)
    out = tmp_path / "out"
    summary = _run({"corpus": {"path": corpus}, "run": {"output": str(out)}})
    assert (summary.ok, summary.failed) == (13, 1)
    results = pd.read_parquet(out / "results").set_index("report_id")
    assert results.loc["only-impression", "Consolidation"] == -1.0
    assert results.loc["s002", "evidence_cardiomegaly"] == "The heart is mildly enlarged."
    assert results[list(OBSERVATIONS)].dtypes.eq("float64").all()
    errors = pd.read_parquet(out / "errors")
    assert list(errors["report_id"]) == ["empty"] and "empty" in errors.loc[0, "error"]
    # labels.csv: the CheXpert labeler's layout
    with open(out / "labels.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["uid", *OBSERVATIONS]
    assert len(rows) == 14 and {c for r in rows[1:] for c in r[1:]} <= {"1.0", "0.0", "-1.0", ""}
    by_id = {r[0]: r[1:] for r in rows[1:]}
    text = "\n\n".join(pd.read_csv(SAMPLE, dtype=str).set_index("uid").loc["s009",
                       ["findings", "impression"]])
    want = CxrRuleLabeler().label(text).labels
    assert by_id["s009"] == ["" if math.isnan(want[o]) else f"{want[o]:.1f}" for o in OBSERVATIONS]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["labels_csv"]["rows"] == 13 and manifest["labeler"] == "rules"
    # resume: nothing is labeled twice
    again = _run({"corpus": {"path": corpus}, "run": {"output": str(out)}})
    assert again.ok == 0 and again.skipped == 14


def test_label_cxr_generic_text_column_and_llm_fake_backend(ray_local, tmp_path):
    pytest.importorskip("cxr_fixtures")
    path = tmp_path / "generic.jsonl"
    with open(path, "w") as f:
        for i, text in enumerate(["Cardiomegaly. No effusion.", "Possible pneumothorax.",
                                  "FENCED Small left pleural effusion."]):
            f.write(json.dumps({"rid": f"g{i}", "report": text}) + "\n")
    corpus = {"path": str(path), "text_column": "report", "id_column": "rid"}
    rules = _run({"corpus": corpus, "run": {"output": str(tmp_path / "rules")}})
    assert rules.ok == 3
    llm = _run({"corpus": corpus, "labeler": "llm", "run": {"output": str(tmp_path / "llm")},
                "backend": {"kind": "fake", "model": "fake",
                            "fake_responder": "cxr_fixtures:rules_json_responder"}})
    assert llm.ok == 3
    a = pd.read_parquet(tmp_path / "rules" / "results").set_index("report_id")[list(OBSERVATIONS)]
    b = pd.read_parquet(tmp_path / "llm" / "results").set_index("report_id")
    assert b.loc["g2", "llm_calls"] == 2  # the fenced answer needed the repair turn
    pd.testing.assert_frame_equal(a.sort_index(), b[list(OBSERVATIONS)].sort_index())
    assert b.loc["g1", "Pneumothorax"] == -1.0


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    from ctray.cli import main

    rc = main(["eval-cxr", "--gold", str(tmp_path / "missing.csv"),
               "--set", f"labelers=[{tmp_path / 'x.csv'}]"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ctray: ")
