"""Reading LEAVS answers: sentence numbers, one option among several, finding types.

Models without guided decoding answer in prose, with markdown, with the format
line somewhere in the middle, or with numbers that do not exist. The parsers take
the format line when there is one, fall back to recognisable patterns, and raise
:class:`AnswerParseError` (the stage turns it into a repair request, then a row
error) rather than guess.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from ctray.tasks.leavs.prompts import TYPE_DEFINITIONS
from ctray.tasks.leavs.schema import FINDING_TYPES


class AnswerParseError(ValueError):
    pass


_NONE = re.compile(r"none|no sentences?|no informative sentences?|n/?a|nothing|0|-|", re.I)
_FORMAT_LINE = re.compile(
    r"^[\s>*_#-]*(?:informative\s+)?(?:sentences?(?:\s+numbers?)?|answer|numbers?)\s*[:=]\s*(.*)$",
    re.I | re.M)
_WHOLE_LIST = re.compile(
    r"[\[(#]*\d+(?:\s*(?:,|;|/|&|and|or|-|–|to|through)\s*#?\s*\d+)*[\])]*")
_RANGE = re.compile(r"(\d+)\s*(?:-|–|to|through)\s*(\d+)")
_SENTENCE_MENTION = re.compile(
    r"\bsentences?\s*(?:numbers?\s*)?(?:are\s+|is\s+|include\s+)?#?\s*"
    r"(\d+(?:\s*(?:,|and|&|or|-|–|to)\s*(?:sentence\s*)?#?\s*\d+)*)", re.I)
# Quoted sentences, remarks in brackets and measurements are not sentence numbers.
_NOISE = re.compile(r"\([^)]*\)|\"[^\"]*\"|\d+(?:\.\d+)?\s*(?:cm|mm|ml|%)|\d+\.\d+", re.I)


def _clean(text: str) -> str:
    text = re.sub(r"<think>.*?</think>", " ", text or "", flags=re.S | re.I)
    return text.replace("**", "").replace("`", "").strip()


def _is_none(text: str) -> bool:
    bare = text.strip(" .*\"'[]()")
    return bool(_NONE.fullmatch(bare) or re.match(r"(?:none|no)\b", bare, re.I))


def _numbers(span: str) -> list[int]:
    out: list[int] = []
    for m in _RANGE.finditer(span):
        lo, hi = int(m.group(1)), int(m.group(2))
        if lo <= hi and hi - lo < 200:
            out.extend(range(lo, hi + 1))
    span = _RANGE.sub(" ", span)
    out.extend(int(n) for n in re.findall(r"\d+", span))
    return out


def parse_sentence_numbers(text: str, n_sentences: int) -> tuple[list[int], list[int]]:
    """Sentence numbers named in ``text`` -> (valid numbers in 1..n, dropped numbers).

    Numbers outside 1..n are dropped (and returned, for the record); an answer with
    only such numbers, or with no recognisable numbers and no "none", is an error.
    """
    body = _clean(text)
    if not body:
        raise AnswerParseError("empty answer")
    lines = _FORMAT_LINE.findall(body)
    if lines:
        span = _NOISE.sub(" ", lines[-1])
        if _is_none(span):
            return [], []
        numbers = _numbers(span)
        if not numbers:
            raise AnswerParseError("no sentence numbers after the 'Sentences:' label")
    elif _is_none(body):
        return [], []
    elif _WHOLE_LIST.fullmatch(body.strip(" .")):
        numbers = _numbers(body)
    else:
        # Prose: "The informative sentences are 2 and 5."
        numbers = [n for m in _SENTENCE_MENTION.finditer(_NOISE.sub(" ", body))
                   for n in _numbers(m.group(1))]
        if not numbers:
            if re.search(r"\b(?:none|no (?:informative )?sentences?)\b", body, re.I):
                return [], []
            raise AnswerParseError("no sentence numbers in the answer")
    valid = sorted({n for n in numbers if 1 <= n <= n_sentences})
    dropped = sorted({n for n in numbers if not 1 <= n <= n_sentences})
    if not valid and dropped:
        raise AnswerParseError(f"sentence numbers {dropped} are outside 1..{n_sentences}")
    return valid, dropped


def _norm(text: str) -> str:
    text = _clean(text).lower()
    text = re.sub(r"^(?:answer|option|final answer|summary)\s*[:\-]\s*", "", text)
    return re.sub(r"\s+", " ", text).strip(" .!\"'*:;")


_NEGATED = r"(?<!\bnot )(?<!\bno )(?<!\bnon-)"


def parse_choice(text: str, options: Mapping[str, Any],
                 aliases: Mapping[str, Any] | None = None) -> Any:
    """The value of the one option ``text`` names (exactly, or as its only option).

    Aliases (short words such as "present") are used only when no full option label
    occurs, and not when negated ("not present").
    """
    norm = _norm(text)
    if not norm:
        raise AnswerParseError("empty answer")
    labels = {k.lower(): v for k, v in options.items()}
    if norm in labels:
        return labels[norm]
    for table in (labels, {k.lower(): v for k, v in (aliases or {}).items()}):
        ordered = sorted(table, key=len, reverse=True)
        hits = {table[label] for label in ordered
                if re.search(rf"{_NEGATED}\b{re.escape(label)}\b", norm)}
        leading = next((table[label] for label in ordered
                        if re.match(rf"{re.escape(label)}\b", norm)), None)
        if leading is not None and hits <= {leading}:
            return leading
        if len(hits) == 1:
            return hits.pop()
        if hits:
            raise AnswerParseError(f"the answer names several options: {sorted(map(str, hits))}")
    raise AnswerParseError(f"the answer names none of the options {list(options)}")


_TYPE_PATTERNS: dict[str, str] = {
    "absent": r"absent|absence|not present",
    "device": r"devices?",
    "postsurgical": r"post-?\s?surgical|post-?operative",
    "enlarged": r"enlarged|enlargement",
    "atrophy": r"atroph(?:y|ic|ied)",
    "anatomy": r"anatom(?:y|ic|ical)",
    "focal": r"focal",
    "diffuse": r"diffuse",
    "quality": r"quality",
    "adjacent": r"adjacent",
    "normal": r"normal",
}
assert set(_TYPE_PATTERNS) == set(TYPE_DEFINITIONS)
_TYPES_LINE = re.compile(r"^[\s>*_#-]*(?:finding\s+)?types?\s*[:=]\s*(.*)$", re.I | re.M)


def parse_types(text: str) -> list[str]:
    """Finding types (release spellings, release order) named in a types answer."""
    body = _clean(text)
    if not body:
        raise AnswerParseError("empty answer")
    lines = _TYPES_LINE.findall(body)
    span = (lines[-1] if lines else body).lower()
    found = []
    for t, pattern in _TYPE_PATTERNS.items():
        # "abnormal" is not "normal"; "not enlarged" is not "enlarged".
        if re.search(rf"(?<![a-z-])(?<!not )(?<!no )(?<!non-)(?:{pattern})\b", span):
            found.append(t)
    if not found:
        raise AnswerParseError("the answer names none of the finding types")
    return [t for t in FINDING_TYPES if t in found]
