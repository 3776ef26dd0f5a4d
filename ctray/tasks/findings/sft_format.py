"""Prompt and answer format of a fine-tuned causal LM on the 18 CT-RATE findings
(``train-cxr-labeler --task ctrate``).

The answer is a JSON list of the findings present, in CT-RATE column order, e.g.
``["Emphysema", "Lung nodule"]`` (``[]`` for none): findings are binary, so the
positives alone determine the whole 18-column row, and the target stays a few tokens
long (the loss is computed on the answer only).
"""

from __future__ import annotations

import json
from typing import Any

from ctray.tasks.findings.schema import FINDING_NAMES

TASK = "ctrate"
PROMPT_VERSION = "ctrate-sft-v1"
LABEL_NAMES: tuple[str, ...] = FINDING_NAMES

INSTRUCTION = (
    "List the findings this chest CT report describes as present. Answer with a JSON list "
    "drawn from: " + ", ".join(FINDING_NAMES) + ". Answer [] when none is present."
)

_BY_KEY = {n.lower(): n for n in FINDING_NAMES}


def build_messages(report_text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{INSTRUCTION}\n\nReport:\n{report_text.strip()}"}]


def answer_text(labels: dict[str, Any]) -> str:
    """``labels``: display name -> 0/1."""
    return json.dumps([n for n in FINDING_NAMES if int(labels.get(n) or 0) == 1],
                      separators=(",", ":"))


def json_schema() -> dict[str, Any]:
    # No uniqueItems: vLLM's grammar backends reject it; a repeated name parses the same.
    return {"type": "array", "items": {"type": "string", "enum": list(FINDING_NAMES)}}


class AnswerError(ValueError):
    pass


def parse_answer(text: str) -> dict[str, float]:
    """Answer text -> the 18 findings as 1.0/0.0."""
    from ctray.text.json_extract import JSONAnswerError, extract_json_array

    try:
        items = extract_json_array(text)
    except JSONAnswerError as exc:
        raise AnswerError(str(exc)) from None
    if not isinstance(items, list):
        raise AnswerError("the answer is not a JSON list")
    out = dict.fromkeys(FINDING_NAMES, 0.0)
    for item in items:
        name = _BY_KEY.get(str(item).strip().lower())
        if name is None:
            raise AnswerError(f"unknown finding {item!r}")
        out[name] = 1.0
    return out


def rename_label_columns(df):
    """A label table's finding columns under their display names."""
    from ctray.tasks.findings.schema import to_names

    return to_names(df)


def label_values(frame):
    """Finding cells as 0/1 ints (raises ValueError on anything else)."""
    import pandas as pd

    values = pd.to_numeric(frame.stack(), errors="raise")
    if not values.isin([0, 1]).all():
        raise ValueError("finding columns must hold 0/1")
    return frame.astype(int)
