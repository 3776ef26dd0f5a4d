"""LLM findings labeler: strict JSON validation, repair retry, and the job with the fake backend."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from ctray.llm.base import LLMRequest, LLMResponse
from ctray.pipeline.stage import RowError
from ctray.tasks.findings.llm_tasks import (
    KEYS,
    FindingsLLMTask,
    LabelParseError,
    label_schema,
    parse_labels,
)
from ctray.tasks.findings.rules import RuleLabeler
from ctray.tasks.findings.schema import FINDING_COLUMNS, NAME_TO_COLUMN

ALL_ZERO = {k: 0 for k in KEYS}
SAMPLE_DIR = Path(__file__).resolve().parents[1] / "ctray" / "data"


def answer(**ones) -> dict:
    out = dict(ALL_ZERO)
    out.update(ones)
    return out


# ----------------------------------------------------------------------------- parsing

def test_good_json_maps_display_names_to_columns_in_order():
    obj = answer(**{"Lung nodule": 1, "Pleural effusion": 1})
    labels = parse_labels(json.dumps(obj))
    assert list(labels) == list(FINDING_COLUMNS)
    assert labels["lung_nodule"] == 1 and labels["pleural_effusion"] == 1
    assert sum(labels.values()) == 2


def test_snake_case_and_case_variants_are_the_same_keys():
    obj = {NAME_TO_COLUMN[k]: 0 for k in KEYS} | {"lung_nodule": 1}
    assert parse_labels(json.dumps(obj))["lung_nodule"] == 1
    obj = {k.upper(): 0 for k in KEYS}
    assert sum(parse_labels(json.dumps(obj)).values()) == 0


@pytest.mark.parametrize("text, problem", [
    ("```json\n" + json.dumps(ALL_ZERO) + "\n```", "code block"),
    ("Here are the labels: " + json.dumps(ALL_ZERO) + " Hope this helps.", "text around"),
    (json.dumps({k: v for k, v in ALL_ZERO.items() if k != "Emphysema"}), "missing keys ['Emphysema']"),
    (json.dumps(ALL_ZERO | {"Pneumothorax": 1}), "unknown keys ['Pneumothorax']"),
    (json.dumps(answer(Cardiomegaly=2)), "values other than 0/1: ['Cardiomegaly=2']"),
    (json.dumps(answer(Cardiomegaly=True)), "values other than 0/1"),
    (json.dumps(answer(Cardiomegaly="1")), "values other than 0/1"),
    (json.dumps(answer(Cardiomegaly=1.0)), "values other than 0/1"),
    ("cardiomegaly: yes", "not valid JSON"),
    ("[0, 1]", "not an object"),
    ("", "empty"),
])
def test_strict_parsing_rejects_and_names_the_problem(text, problem):
    with pytest.raises(LabelParseError, match=re.escape(problem)):
        parse_labels(text)


def test_lenient_parsing_takes_one_object_out_of_a_fence_or_prose():
    obj = answer(Emphysema=1)
    fenced = "```json\n" + json.dumps(obj) + "\n```"
    prose = "Sure. " + json.dumps(obj) + " Done."
    assert parse_labels(fenced, lenient=True)["emphysema"] == 1
    assert parse_labels(prose, lenient=True)["emphysema"] == 1
    with pytest.raises(LabelParseError, match="more than one"):
        parse_labels(prose + " " + json.dumps(obj), lenient=True)
    # Lenient extraction still validates the content.
    with pytest.raises(LabelParseError, match="values other than 0/1"):
        parse_labels("```json\n" + json.dumps(answer(Emphysema=2)) + "\n```", lenient=True)


def test_schema_requires_exactly_the_18_keys_with_0_or_1():
    schema = label_schema()
    assert schema["required"] == list(KEYS) and len(KEYS) == 18
    assert schema["additionalProperties"] is False
    assert all(p == {"type": "integer", "enum": [0, 1]} for p in schema["properties"].values())


def test_requests_carry_the_schema_and_pick_the_prompt_language():
    task = FindingsLLMTask("auto")
    en = task.build_request({"report_id": "a", "text": "There is a small pleural effusion."})
    ja = task.build_request({"report_id": "b", "text": "右胸水を認める。"})
    assert en.json_schema == label_schema() and ja.json_schema == label_schema()
    assert "右胸水を認める" in ja.messages[-1]["content"] and "レポート" in ja.messages[-1]["content"]
    assert "Report:" in en.messages[-1]["content"]
    assert FindingsLLMTask("en", guided_json=False).build_request(
        {"report_id": "a", "text": "x"}).json_schema is None
    with pytest.raises(RowError, match="row 'c': field 'text' is empty"):
        task.build_request({"report_id": "c", "text": "  "})
    versions = task.prompt_version()
    assert "findings-json-en@" in versions and "findings-json-ja@" in versions


def test_repair_request_continues_the_conversation_with_the_problem():
    task = FindingsLLMTask("en")
    row = {"report_id": "r1", "text": "Cardiomegaly."}
    bad = LLMResponse("```json\n{}\n```")
    with pytest.raises(RowError) as err:
        task.parse(row, bad)
    follow = task.repair_request(row, bad, err.value)
    assert follow.messages[-2] == {"role": "assistant", "content": bad.text}
    assert "code block" in follow.messages[-1]["content"]
    assert follow.json_schema == label_schema()
    assert FindingsLLMTask("en", repair=False).repair_request(row, bad, err.value) is None


# ----------------------------------------------------------------------------- through LLMStage

def _report(request: LLMRequest) -> str:
    content = request.messages[1]["content"] if request.messages[0]["role"] == "system" \
        else request.messages[0]["content"]
    return content.split('"""\n', 1)[1].rsplit('\n"""', 1)[0]


def mode_for(report: str) -> int:
    """0 good at once, 1 fenced then repaired, 2 a value of 2 then repaired, 3 prose twice."""
    return int(hashlib.sha1(report.encode("utf-8")).hexdigest(), 16) % 4


def gold_answer(report: str) -> dict:
    labels = RuleLabeler("en").label(report).labels
    return {name: labels[NAME_TO_COLUMN[name]] for name in KEYS}


def flaky_responder(request: LLMRequest) -> str:
    """Answers with the rule labeler's labels, in a format that depends on the report."""
    report = _report(request)
    good = json.dumps(gold_answer(report))
    is_repair = len(request.messages) > 3
    mode = mode_for(report)
    if mode == 0 or (is_repair and mode in (1, 2)):
        return good
    if mode == 1:
        return "```json\n" + good + "\n```"
    if mode == 2:
        return json.dumps(gold_answer(report) | {"Cardiomegaly": 2})
    return "The labels are " + good


def test_llm_stage_repairs_once_then_keeps_the_raw_answer(ray_local, tmp_path):
    from ctray.cli import run_job
    from ctray.io.output import OutputLayout

    out = tmp_path / "llm"
    summary = run_job("label-findings", [
        "--labeler", "llm", "--backend", "fake", "--output", str(out), "--limit", "24",
        "--set", "backend.fake_responder=test_findings_llm:flaky_responder",
        "--set", "backend.batch_size=8"])
    sample = pd.read_csv(SAMPLE_DIR / "sample_reports_en.csv").head(24)
    texts = {r.VolumeName: f"{r.Findings_EN.strip()}\n\n{r.Impressions_EN.strip()}"
             for r in sample.itertuples()}
    modes = {rid: mode_for(t) for rid, t in texts.items()}
    assert len(set(modes.values())) == 4, "the sample should exercise every answer format"

    layout = OutputLayout(str(out))
    results = pd.concat(pd.read_parquet(f) for f in layout.parquet_files("results"))
    errors = pd.concat(pd.read_parquet(f) for f in layout.parquet_files("errors"))
    assert set(results.report_id) == {r for r, m in modes.items() if m != 3}
    assert set(errors.report_id) == {r for r, m in modes.items() if m == 3}
    for row in results.itertuples():
        expected = gold_answer(texts[row.report_id])
        assert [getattr(row, c) for c in FINDING_COLUMNS] == [expected[k] for k in KEYS]
        assert row.llm_calls == (1 if modes[row.report_id] == 0 else 2)
    assert errors.error.str.contains("text around the JSON").all()
    assert errors.llm_raw.str.startswith("The labels are ").all()
    manifest = summary.manifest
    # A row that failed after its repair request made two calls, and both are counted.
    assert manifest["usage"]["llm_calls"] == sum(1 if m == 0 else 2 for m in modes.values())
    assert any(v.startswith("findings-json-en@") for v in
               ",".join(manifest["prompt_versions"]).split(","))
