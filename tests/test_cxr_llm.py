"""CXR LLM labeler: the answer schema, strict parsing and repair, through LLMStage with
the fake backend; the sft answer format of train-cxr-labeler models."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from cxr_fixtures import FENCED, UNPARSEABLE
from ctray.llm.config import backend_config
from ctray.llm.task import LLMStage
from ctray.tasks.cxr.llm_tasks import CxrLLMTask, LabelParseError, label_schema, parse_labels
from ctray.tasks.cxr.schema import OBSERVATIONS

FULL = {o: "blank" for o in OBSERVATIONS} | {"Cardiomegaly": "positive",
                                             "Pleural Effusion": "negative",
                                             "Edema": "uncertain"}


def test_schema_has_the_14_keys_and_4_classes_and_validates_answers():
    jsonschema = pytest.importorskip("jsonschema")
    schema = label_schema()
    assert schema["required"] == list(OBSERVATIONS)
    assert all(p["enum"] == ["positive", "negative", "uncertain", "blank"]
               for p in schema["properties"].values())
    jsonschema.validate(FULL, schema)
    for bad in ({**FULL, "Cardiomegaly": 1}, {**FULL, "Extra": "blank"},
                {k: v for k, v in FULL.items() if k != "Edema"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_parse_labels_strict():
    labels = parse_labels(json.dumps(FULL))
    assert labels["Cardiomegaly"] == 1.0 and labels["Pleural Effusion"] == 0.0
    assert labels["Edema"] == -1.0 and math.isnan(labels["Fracture"])
    assert list(labels) == list(OBSERVATIONS)
    cases = {
        "": "empty",
        "```json\n" + json.dumps(FULL) + "\n```": "code block",
        "Sure: " + json.dumps(FULL): "text around",
        json.dumps(list(FULL)): "not an object",
        json.dumps({k: v for k, v in FULL.items() if k != "Edema"}): "missing keys ['Edema']",
        json.dumps({**FULL, "Hernia": "blank"}): "unknown keys",
        json.dumps({**FULL, "Edema": "maybe"}): "values other than",
        json.dumps({**FULL, "Edema": 1}): "values other than",
    }
    for text, problem in cases.items():
        with pytest.raises(LabelParseError, match=problem.replace("[", r"\[").replace("]", r"\]")):
            parse_labels(text)
    # snake_case keys are the same observations; lenient accepts a fenced object
    snake = {o.lower().replace(" ", "_"): v for o, v in FULL.items()}
    assert parse_labels(json.dumps(snake)) == labels
    fenced = parse_labels("```json\n" + json.dumps(FULL) + "\n```", lenient=True)
    assert fenced["Cardiomegaly"] == 1.0


def _stage(responder: str, **task) -> LLMStage:
    backend = backend_config({"kind": "fake", "model": "fake",
                                            "fake_responder": f"cxr_fixtures:{responder}"})
    stage = LLMStage(CxrLLMTask(**task), backend)
    stage.setup()
    return stage


def test_llm_stage_labels_repairs_and_records_row_errors():
    stage = _stage("rules_json_responder")
    batch = pd.DataFrame({"report_id": ["a", "b", "c", "d"],
                          "text": ["Cardiomegaly. No pneumothorax.",
                                   f"{FENCED} Small left pleural effusion.",
                                   f"{UNPARSEABLE} report", "   "]})
    out = stage.process_batch(batch).set_index("report_id")
    assert out.loc["a", "Cardiomegaly"] == 1.0 and out.loc["a", "Pneumothorax"] == 0.0
    assert math.isnan(out.loc["a", "Fracture"]) and out.loc["a", "llm_calls"] == 1
    # the fenced answer was refused and the repair request answered cleanly
    assert out.loc["b", "Pleural Effusion"] == 1.0 and out.loc["b", "llm_calls"] == 2
    # a second unusable answer is a row error that keeps the raw answer
    assert "field llm_raw" in out.loc["c", "_error"] and "I think" in out.loc["c", "llm_raw"]
    assert "empty" in out.loc["d", "_error"]
    assert stage.describe()["prompt_version"].startswith("cxr-json-4class@")


def test_request_carries_the_schema_only_with_guided_json():
    task = CxrLLMTask()
    assert task.build_request({"report_id": "x", "text": "Cardiomegaly."}).json_schema == label_schema()
    assert CxrLLMTask(guided_json=False).build_request(
        {"report_id": "x", "text": "Cardiomegaly."}).json_schema is None


def test_sft_answer_format_uses_the_training_prompt():
    sft = pytest.importorskip("ctray.tasks.cxr.sft_format")
    stage = _stage("rules_sft_responder", answer_format="sft")
    request = stage.task.build_request({"report_id": "a", "text": "Cardiomegaly."})
    assert request.messages == sft.build_messages("Cardiomegaly.")
    assert request.json_schema == sft.json_schema()
    out = stage.process_batch(pd.DataFrame({"report_id": ["a"], "text": ["Cardiomegaly."]}))
    assert out.loc[0, "Cardiomegaly"] == 1.0 and math.isnan(out.loc[0, "Edema"])
    assert stage.task.prompt_version() == sft.PROMPT_VERSION
    assert stage.task.repair_request({}, None, None) is None  # no repair dialogue
