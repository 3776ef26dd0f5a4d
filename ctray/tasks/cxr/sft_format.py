"""Prompt and answer format of the fine-tuned CXR labeler (``train-cxr-labeler --task cxr``).

The same functions build the training examples and the inference prompts
(``label-cxr --labeler llm`` with ``llm.answer_format: sft``), so the model always sees
the text it was trained on. The answer groups the observations the report mentions by
class, in CheXpert column order, as compact JSON; empty groups are left out::

    {"positive":["No Finding"],"negative":["Cardiomegaly","Pneumothorax"]}

Why this shape: most of the 14 observations are blank in a report, so only mentioned
ones are written; grouping by class writes each class word once instead of once per
observation, and compact separators drop the spaces: a typical Open-i answer is about
30 Gemma tokens where a name->class object takes about 50 (measured on one normal
report's labels). Answer tokens are what the completion-only loss pays for (each
costs a 262k-way output projection), and a short, regular target is what a small
model learns fastest. Class words are meaningful to the base model (zero-shot runs
use the same prompt), the shape is one JSON schema for guided decoding (vLLM), and
``{}`` is the answer for a report that mentions none. Parsing maps every observation
not listed to blank, so an answer covers the full 14-column table.
"""

from __future__ import annotations

import json
import math
from typing import Any

from ctray.tasks.cxr.schema import BLANK, CLASS_WORDS, OBSERVATIONS, observation_for

TASK = "cxr"
PROMPT_VERSION = "cxr-sft-v3"
LABEL_NAMES: tuple[str, ...] = OBSERVATIONS
#: class value -> answer word (blank is never written: the key is left out)
WORD_FOR: dict[float, str] = {1.0: "positive", 0.0: "negative", -1.0: "uncertain"}

GROUPS: tuple[str, ...] = ("positive", "negative", "uncertain")

# Short on purpose: prompt tokens are most of the forward/backward cost on CPU, and the
# fine-tuned model learns the observation names and the answer shape from the answers.
# (Zero-shot runs of a base model are better served by label-cxr's own json-4class
# prompt, which spells out all 14 names.)
INSTRUCTION = ("Label this chest X-ray report with the CheXpert observations it mentions, "
               "as JSON grouped by class (positive, negative, uncertain).")


def build_messages(report_text: str) -> list[dict[str, str]]:
    """Chat messages for one report (one user turn: Gemma has no system role)."""
    return [{"role": "user", "content": f"{INSTRUCTION}\n\nReport:\n{report_text.strip()}"}]


def answer_text(labels: dict[str, Any]) -> str:
    """The training target for a row of the label table (display name -> 1/0/-1/blank)."""
    from ctray.tasks.cxr.schema import to_class

    groups: dict[str, list[str]] = {g: [] for g in GROUPS}
    for name in OBSERVATIONS:
        value = to_class(labels.get(name))
        if not math.isnan(value):
            groups[WORD_FOR[value]].append(name)
    return json.dumps({g: names for g, names in groups.items() if names},
                      ensure_ascii=False, separators=(",", ":"))


def json_schema() -> dict[str, Any]:
    """Guided-decoding schema of the answer (all groups optional, no other keys).
    No ``uniqueItems``: vLLM's grammar backends reject it (a repeated name parses to
    the same label; a name in two groups is an AnswerError)."""
    names = {"type": "array", "items": {"type": "string", "enum": list(OBSERVATIONS)}}
    return {"type": "object", "properties": {g: names for g in GROUPS},
            "additionalProperties": False}


class AnswerError(ValueError):
    """The model's text is not a valid answer (kept as a row error by the labeler)."""


def parse_answer(text: str) -> dict[str, float]:
    """Answer text -> all 14 observations as 1.0/0.0/-1.0/NaN. Raises AnswerError on
    text that is not such a JSON object (unknown group or observation, an observation
    in two groups); the message never quotes the answer."""
    from ctray.text.json_extract import JSONAnswerError, extract_json_object

    try:
        obj = extract_json_object(text)
    except JSONAnswerError as exc:
        raise AnswerError(str(exc)) from None
    if not isinstance(obj, dict):
        raise AnswerError("the answer is not a JSON object")
    out = {name: BLANK for name in OBSERVATIONS}
    for group, names in obj.items():
        word = str(group).strip().lower()
        if word not in WORD_FOR.values():
            raise AnswerError("unknown class group")
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, list):
            raise AnswerError(f"{word}: not a list")
        for key in names:
            name = observation_for(key)
            if name is None:
                raise AnswerError(f"{word}: unknown observation")
            if not math.isnan(out[name]) and out[name] != CLASS_WORDS[word]:
                raise AnswerError(f"{name} is in two classes")
            out[name] = CLASS_WORDS[word]
    return out


def rename_label_columns(df):
    """A label table's columns under the observation names (CheXpert spellings, label-cxr
    output); evidence columns are left alone."""
    from ctray.tasks.cxr.schema import observation_for

    return df.rename(columns={c: observation_for(c) for c in df.columns
                              if observation_for(c) is not None
                              and not str(c).startswith("evidence_")})


def label_values(frame):
    """Label cells as 1.0 / 0.0 / -1.0 / NaN (raises ValueError on anything else)."""
    from ctray.tasks.cxr.schema import to_class

    return frame.map(to_class)
