"""Answer parsers: raw model output -> the prediction a metric compares.

Each parser takes the released ``generated`` value and ``strict``. The default
(``strict=False``) follows the conventions that reproduce the published scores;
``strict=True`` returns None for anything that is not a clean answer, and the
metrics count None as wrong. Conventions and their evidence: docs/jclinicalbench.md.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any, Callable

# Where a generated summary/simplification ends: the next input heading of the one-shot
# pattern ("### 入力:"; the example's "### 入力例:" does not cut) or the word "python"
# (with its code fence, if any): Swallow appends Python code blocks or degenerates into
# "python" lines after its answer. Evidence per file: docs/jclinicalbench.md.
GENERATION_CUT = re.compile(r"### 入力:|(?:```)?python")
EOS = "[EOS]"
_FENCE_OPEN = re.compile(r"^```[A-Za-z]*\s*")
_FENCE_CLOSE = re.compile(r"\s*```\s*$")
# An inline entity tag, attributes allowed (gold: <m-key state="executed">); non-greedy body.
_TAG = re.compile(r"<([A-Za-z][\w-]*)(?:\s[^<>]*)?>(.*?)</\1>", re.S)
# Any markup tag, removed before offsets are counted.
_ANY_TAG = re.compile(r"</?[A-Za-z][^<>]*>")


def generation_text(value: Any, strict: bool = False) -> str:
    """Summaries/simplifications: the output up to the first ``### 入力:`` (models that
    continue the few-shot pattern write the next input there) or ``python``."""
    return "" if value is None else GENERATION_CUT.split(str(value), maxsplit=1)[0]


def _strip_fences(text: str) -> str:
    return _FENCE_CLOSE.sub("", _FENCE_OPEN.sub("", text.strip())).strip()


def python_list(value: Any, strict: bool = False) -> list[str] | None:
    """A list answer: JSON or a Python literal after removing code fences; otherwise
    (a truncated list, prose) the paper splits on commas and strips brackets/quotes."""
    if isinstance(value, list):
        return [str(x).strip() for x in value]
    text = _strip_fences("" if value is None else str(value))
    for load in (json.loads, ast.literal_eval):
        try:
            parsed = load(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(parsed, (list, tuple, set)):
            return [str(x).strip() for x in parsed]
    if strict:
        return None
    return [part.strip().strip("[]'\"") for part in text.split(",")]


def first_int(value: Any, strict: bool = False) -> int | None:
    """ExamQA: the first integer in the output (released files already hold it as int)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    m = re.search(r"-?\d+", str(value))
    return int(m.group()) if m else None


def ade_label(value: Any, strict: bool = False) -> str | None:
    """DC-ADE: "1" = 有 (event reported), "2" = 無. The paper counts anything that does
    not start with "2" as 有; strict mode needs a leading 1 or 2."""
    text = "" if value is None else str(value).strip()
    if text.startswith("2"):
        return "無"
    if strict and not text.startswith("1"):
        return None
    return "有"


def tnm_factors(value: Any, strict: bool = False) -> dict[str, str | None]:
    """DC-TMN: the token after ``T因子:`` / ``N因子:`` / ``M因子:`` (None when absent)."""
    text = "" if value is None else str(value)
    out: dict[str, str | None] = {}
    for factor in "tnm":
        m = re.search(re.escape(f"{factor.upper()}因子:") + r"\s*(\S+)", text)
        out[factor] = m.group(1) if m else None
    return out


def tagged_entities(value: Any, strict: bool = False,
                    types: tuple[str, ...] | list[str] = ("d",)) -> set[tuple[int, int, str]]:
    """NER: (start, end, type) spans of inline tags, after cutting at ``[EOS]``. Offsets
    are counted in the text with every *complete* tag pair replaced by its content; a
    stray tag (an unclosed ``<m-val>``) stays and shifts the spans after it, as in the
    release. Used for gold (always balanced) and prediction alike."""
    text = ("" if value is None else str(value)).split(EOS)[0]
    found = set()
    offset, pos = 0, 0  # offset: length of the de-tagged text up to ``pos`` in ``text``
    for m in _TAG.finditer(text):
        offset += m.start() - pos
        content = _ANY_TAG.sub("", m.group(2))
        if m.group(1) in types:
            found.add((offset, offset + len(content), m.group(1)))
        offset += len(content)
        pos = m.end()
    return found


def leading_digit(value: Any, strict: bool = False,
                  labels: tuple[str, ...] | list[str] = ()) -> str | None:
    """RE: a leading digit 1..len(labels) selects the label (e.g. "1. e1が..." -> labels[0])."""
    m = re.match(r"\s*([1-9])", "" if value is None else str(value))
    if not m or int(m.group(1)) > len(labels):
        return None
    return labels[int(m.group(1)) - 1]


PARSERS: dict[str, Callable[..., Any]] = {
    "generation_text": generation_text,
    "python_list": python_list,
    "first_int": first_int,
    "ade_label": ade_label,
    "tnm_factors": tnm_factors,
    "tagged_entities": tagged_entities,
    "leading_digit": leading_digit,
}
