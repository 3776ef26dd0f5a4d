"""The one JSON extraction for LLM answers (ctray.text.json_extract)."""

from __future__ import annotations

import pytest

from ctray.text.json_extract import (JSONAnswerError, extract_json_array, extract_json_object,
                                     schema_problems)


@pytest.mark.parametrize("answer, expected", [
    ('{"a": 1}', {"a": 1}),
    ('Sure, here it is:\n{"a": {"b": [1, 2]}}\nHope this helps.', {"a": {"b": [1, 2]}}),
    ('```json\n{"a": "x}y"}\n```', {"a": "x}y"}),  # a brace inside a string is not the end
    ('```JSON\n{"a": 1}\n```', {"a": 1}),
    ('```\n{"a": 1}\n```', {"a": 1}),
])
def test_object_in_the_shapes_models_answer_with(answer, expected):
    assert extract_json_object(answer) == expected
    assert extract_json_object(answer, single=True) == expected


@pytest.mark.parametrize("answer, why", [
    ("", "empty"), (None, "empty"), ("   ", "empty"),
    ("cardiomegaly: yes", "no JSON object"),
    ('{"a": [1, }', "not valid JSON"),
])
def test_unusable_answers_say_why(answer, why):
    with pytest.raises(JSONAnswerError, match=why):
        extract_json_object(answer)


def test_single_refuses_ambiguous_answers_the_lenient_mode_accepts():
    two_objects = '{"a": 1} or maybe {"a": 2}'
    two_fences = '```json\n{"a": 1}\n```\n```json\n{"a": 2}\n```'
    assert extract_json_object(two_objects) == {"a": 1}
    assert extract_json_object(two_fences) == {"a": 1}
    with pytest.raises(JSONAnswerError, match="more than one JSON object"):
        extract_json_object(two_objects, single=True)
    with pytest.raises(JSONAnswerError, match="several code blocks"):
        extract_json_object(two_fences, single=True)


def test_arrays_and_messages_never_quote_the_answer():
    assert extract_json_array('Findings: ["Cardiomegaly", "Emphysema"].') == \
        ["Cardiomegaly", "Emphysema"]
    secret = "Patient Yamada Taro has a mass"
    with pytest.raises(JSONAnswerError) as err:
        extract_json_object(secret + " {broken")
    assert "Yamada" not in str(err.value)
    problems = schema_problems({"a": "x"}, {"type": "object", "properties": {"a": {"type": "integer"}}})
    assert problems and problems[0].startswith("schema: at a:")
