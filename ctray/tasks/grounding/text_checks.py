"""Deterministic checks and post-processing around the three grounding LLM steps.

A rewrite that quietly drops a sentence, changes "12 mm" into "21 mm" or cites a
sentence code that does not exist still looks like valid JSON; these checks turn
such answers into a repair request and then a row error instead of a plausible
but wrong table. Problems name codes and measurements only, never report text.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Iterable

from ctray.text.json_extract import JSONAnswerError, extract_json_object, schema_problems
from ctray.text.sentences import split_sentences

# Bump when a check or the rounding rule changes: resumed runs must not mix them.
CHECKS_VERSION = "1"

# The seven report regions of the paper's rewrite step, with the code letter of
# their sentences (L0, H0, ...). The paper names L, H, M, B and A; C and N are ours.
REGIONS: dict[str, str] = {
    "Lungs/Airways/Pleura": "L",
    "Heart/Vessels": "H",
    "Mediastinum/Hila": "M",
    "Chest wall/Axilla": "C",
    "Lower neck": "N",
    "Bones": "B",
    "Upper abdomen": "A",
}
IMPRESSION_LETTER = "I"
FINDINGS_LETTER = "F"
_NOT_GIVEN = re.compile(r"^\s*(not\s+given|none|n/?a)?\s*[.]?\s*$", re.I)


class CheckError(ValueError):
    """An answer that parsed but fails validation; ``problems`` lists why."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


# --- sentence codes -----------------------------------------------------------------

def section_sentences(text: Any, lang: str = "auto") -> list[str]:
    """Sentences of one report section; "Not given." and blanks mean no sentences."""
    if not isinstance(text, str) or _NOT_GIVEN.match(text):
        return []
    return split_sentences(text, lang)


def code_sentences(findings: Any, impressions: Any, lang: str = "auto") -> dict[str, str]:
    """{"F0": ..., "F1": ..., "I0": ...} in report order."""
    coded = {f"{FINDINGS_LETTER}{i}": s for i, s in enumerate(section_sentences(findings, lang))}
    coded.update({f"{IMPRESSION_LETTER}{i}": s
                  for i, s in enumerate(section_sentences(impressions, lang))})
    return coded


# --- measurements -------------------------------------------------------------------

# unit spelling -> (canonical unit, factor to it). Lengths compare in mm so that a
# faithful "4.3 cm" for "43 mm" is not flagged as a changed number.
_UNITS: dict[str, tuple[str, Decimal]] = {
    "mm": ("mm", Decimal(1)), "millimeter": ("mm", Decimal(1)),
    "millimeters": ("mm", Decimal(1)), "millimetre": ("mm", Decimal(1)),
    "millimetres": ("mm", Decimal(1)),
    "cm": ("mm", Decimal(10)), "centimeter": ("mm", Decimal(10)),
    "centimeters": ("mm", Decimal(10)), "centimetre": ("mm", Decimal(10)),
    "centimetres": ("mm", Decimal(10)),
    "ml": ("ml", Decimal(1)), "cc": ("ml", Decimal(1)),
    "hu": ("HU", Decimal(1)),
    "%": ("%", Decimal(1)), "percent": ("%", Decimal(1)),
    "year": ("year", Decimal(1)), "years": ("year", Decimal(1)),
    "month": ("month", Decimal(1)), "months": ("month", Decimal(1)),
    "week": ("week", Decimal(1)), "weeks": ("week", Decimal(1)),
    "day": ("day", Decimal(1)), "days": ("day", Decimal(1)),
}
# A decimal comma ("4,5 mm", Turkish style) has one or two digits; "1,500" is a
# thousands separator and is not read as a measurement at all.
_NUM = r"\d+(?:\.\d+|,\d{1,2}(?!\d))?"
# Dimension lists and ranges share one unit: "9x5x6 mm", "2-3 mm", "2 to 3 cm".
# Not "and": "segments 6 and 12 mm nodule" would turn a segment number into a length.
_SEP = r"\s*(?:x|×|\*|-|–|to)\s*"
_UNIT_ALT = "|".join(sorted((re.escape(u) for u in _UNITS), key=len, reverse=True))
_MEASURE = re.compile(
    rf"(?<![\w.,])(?P<nums>{_NUM}(?:{_SEP}{_NUM})*)\s*-?\s*(?P<unit>{_UNIT_ALT})(?![a-z0-9])",
    re.I)
_NUMBER = re.compile(_NUM)


@dataclass(frozen=True)
class Measurement:
    value: Decimal  # in the canonical unit; Decimal("43") == Decimal("43.0")
    unit: str

    def __str__(self) -> str:
        text = format(self.value.normalize(), "f")
        return f"{text} {self.unit}"


def _decimal(text: str) -> Decimal:
    return Decimal(text.replace(",", "."))


def measurements(text: str) -> Counter:
    """Multiset of the measurements with units in ``text``."""
    found: Counter = Counter()
    for m in _MEASURE.finditer(text or ""):
        unit, factor = _UNITS[m.group("unit").lower()]
        for num in _NUMBER.findall(m.group("nums")):
            found[Measurement(_decimal(num) * factor, unit)] += 1
    return found


def all_measurements(texts: Iterable[str]) -> Counter:
    total: Counter = Counter()
    for t in texts:
        total.update(measurements(t))
    return total


def _fmt(items: Iterable[Measurement]) -> str:
    return ", ".join(sorted(str(m) for m in items))


# --- the rounding rule of the extraction step ---------------------------------------

def _round(value: Decimal, places: int) -> Decimal:
    return value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


def _round_number(num: str, unit: str) -> str:
    value = _decimal(num)
    places = 0 if unit == "mm" else 1
    decimals = len(num.replace(",", ".").partition(".")[2])
    if decimals <= places:
        return num.replace(",", ".")
    rounded = _round(value, places)
    if rounded == 0:
        # "0 mm" would erase a real sub-millimetre measurement; keep it as written.
        return num.replace(",", ".")
    return format(rounded, "f")


def round_measurements(text: str) -> str:
    """Millimetres to whole numbers, centimetres to one decimal (half up, so the
    result does not depend on float representation or banker's rounding)."""
    def fix(m: re.Match) -> str:
        unit_text = m.group("unit")
        spelled = unit_text.lower()
        if spelled not in _UNITS or _UNITS[spelled][0] != "mm":
            return m.group(0)
        unit = "mm" if _UNITS[spelled][1] == 1 else "cm"
        nums = _NUMBER.sub(lambda n: _round_number(n.group(0), unit), m.group("nums"))
        return m.group(0).replace(m.group("nums"), nums, 1)

    return _MEASURE.sub(fix, text)


def _length_variants(m: Measurement) -> set[Measurement]:
    """A source length and what the rounding rule may turn it into."""
    if m.unit != "mm":
        return {m}
    return {m, Measurement(_round(m.value, 0), "mm"),
            Measurement(_round(m.value / 10, 1) * 10, "mm")}


# --- JSON answers -------------------------------------------------------------------

def load_json_object(text: str) -> dict[str, Any]:
    """The JSON object in a model answer (bare, or in a ```json fence), as a check."""
    try:
        return extract_json_object(text)
    except JSONAnswerError as exc:
        raise CheckError([str(exc)]) from None


def validate_schema(value: Any, schema: dict[str, Any], limit: int = 5) -> None:
    problems = schema_problems(value, schema, limit)
    if problems:
        raise CheckError(problems)


# --- step 1: rewrite ----------------------------------------------------------------

def _sentence_item(code_pattern: str) -> dict[str, Any]:
    return {
        "type": "object", "additionalProperties": False, "required": ["sources", "text"],
        "properties": {
            "sources": {"type": "array", "minItems": 1,
                        "items": {"type": "string", "pattern": code_pattern}},
            "text": {"type": "string", "minLength": 1},
        },
    }


REWRITE_SCHEMA: dict[str, Any] = {
    "title": "ground_rewrite",
    "type": "object", "additionalProperties": False, "required": ["findings", "impressions"],
    "properties": {
        "findings": {
            "type": "object", "additionalProperties": False, "required": list(REGIONS),
            "properties": {r: {"type": "array", "items": _sentence_item("^F[0-9]+$")}
                           for r in REGIONS},
        },
        "impressions": {"type": "array", "items": _sentence_item("^I[0-9]+$")},
    },
}


@dataclass
class Rewrite:
    """A checked rewrite with region-coded sentences."""

    by_region: dict[str, dict[str, str]]  # region -> {"L0": text}
    impressions: dict[str, str]  # {"I0": text}
    code_map: dict[str, list[str]]  # "L0" -> ["F2"], "I0" -> ["I0", "I1"]

    @property
    def sentences(self) -> dict[str, str]:
        out = {c: t for region in self.by_region.values() for c, t in region.items()}
        out.update(self.impressions)
        return out

    def as_report(self) -> dict[str, Any]:
        return {"Findings": self.by_region, "Impressions": self.impressions}


def check_rewrite(source: dict[str, str], answer: dict[str, Any]) -> Rewrite:
    """Validate a rewrite answer against the coded source sentences."""
    validate_schema(answer, REWRITE_SCHEMA)
    problems: list[str] = []
    items = [(r, it) for r in REGIONS for it in answer["findings"][r]]
    items += [(None, it) for it in answer["impressions"]]
    cited = [c for _, it in items for c in it["sources"]]
    missing = [c for c in source if c not in cited]
    unknown = sorted(set(cited) - set(source), key=_code_order)
    if missing:
        problems.append(f"sentence(s) {', '.join(missing)} missing from the rewrite")
    if unknown:
        problems.append(f"sentence code(s) {', '.join(unknown)} do not exist in the input")
    blank = [s for _, it in items if not it["text"].strip() for s in it["sources"]]
    if blank:
        problems.append(f"empty rewritten sentence for {', '.join(blank)}")
    before = all_measurements(source.values())
    after = all_measurements(it["text"] for _, it in items)
    lost = before - after
    # Repeating a source measurement is fine (the impression may restate a finding);
    # a value that is nowhere in the source is a changed or invented number.
    new = set(after) - set(before)
    if lost:
        problems.append(f"measurement(s) {_fmt(lost.elements())} missing or changed")
    if new:
        problems.append(f"measurement(s) {_fmt(new)} not in the source")
    if problems:
        raise CheckError(problems)
    by_region: dict[str, dict[str, str]] = {}
    code_map: dict[str, list[str]] = {}
    for region, letter in REGIONS.items():
        by_region[region] = {}
        for i, it in enumerate(answer["findings"][region]):
            by_region[region][f"{letter}{i}"] = it["text"].strip()
            code_map[f"{letter}{i}"] = list(dict.fromkeys(it["sources"]))
    impressions = {}
    for i, it in enumerate(answer["impressions"]):
        impressions[f"{IMPRESSION_LETTER}{i}"] = it["text"].strip()
        code_map[f"{IMPRESSION_LETTER}{i}"] = list(dict.fromkeys(it["sources"]))
    return Rewrite(by_region, impressions, code_map)


def _code_order(code: str) -> tuple[str, int]:
    m = re.match(r"([A-Z]+)(\d+)$", code)
    return (m.group(1), int(m.group(2))) if m else (code, -1)


# --- step 2: findings ---------------------------------------------------------------

_CODE_LETTERS = "".join(REGIONS.values()) + IMPRESSION_LETTER
FINDINGS_SCHEMA: dict[str, Any] = {
    "title": "ground_findings",
    "type": "object", "additionalProperties": False, "required": ["findings"],
    "properties": {"findings": {"type": "array", "items": {
        "type": "object", "additionalProperties": False,
        "required": ["phrase", "sentence_codes", "abnormal", "prior_reference"],
        "properties": {
            "phrase": {"type": "string", "minLength": 1},
            "sentence_codes": {"type": "array", "minItems": 1, "items": {
                "type": "string", "pattern": f"^[{_CODE_LETTERS}][0-9]+$"}},
            "abnormal": {"enum": ["Y", "N"]},
            "prior_reference": {"enum": ["Y", "N"]},
        },
    }}},
}


def check_findings(sentences: dict[str, str], code_map: dict[str, list[str]],
                   answer: dict[str, Any]) -> list[dict[str, Any]]:
    """Validate extracted findings; return them numbered S1.. with rounding applied."""
    validate_schema(answer, FINDINGS_SCHEMA)
    problems: list[str] = []
    raw = answer["findings"]
    if sentences and not raw:
        problems.append(f"no findings extracted from {len(sentences)} sentences")
    out = []
    for i, item in enumerate(raw, start=1):
        fid = f"S{i}"
        codes = list(dict.fromkeys(item["sentence_codes"]))
        unknown = [c for c in codes if c not in sentences]
        if unknown:
            problems.append(f"finding {fid} cites sentence code(s) {', '.join(unknown)} "
                            "that do not exist")
        phrase = round_measurements(item["phrase"].strip())
        if not phrase:
            problems.append(f"finding {fid} has an empty phrase")
        allowed: set[Measurement] = set()
        for m in all_measurements(sentences.get(c, "") for c in codes):
            allowed |= _length_variants(m)
        foreign = [m for m in measurements(phrase) if m not in allowed]
        if foreign and not unknown:
            problems.append(f"finding {fid}: measurement(s) {_fmt(foreign)} are not in its "
                            f"sentence(s) {', '.join(codes)}")
        source_codes = list(dict.fromkeys(s for c in codes for s in code_map.get(c, [])))
        out.append({"id": fid, "phrase": phrase, "sentence_codes": codes,
                    "source_codes": source_codes, "abnormal": item["abnormal"] == "Y",
                    "prior_reference": item["prior_reference"] == "Y"})
    if problems:
        raise CheckError(problems)
    return out


# --- step 3: categories -------------------------------------------------------------

def categories_schema(ids: list[str], codes: list[str]) -> dict[str, Any]:
    """Per-request schema: exactly these finding ids, each one schema code."""
    return {
        "title": "ground_categories",
        "type": "object", "additionalProperties": False, "required": ["categories"],
        "properties": {"categories": {
            "type": "object", "additionalProperties": False, "required": list(ids),
            "properties": {i: {"enum": list(codes)} for i in ids},
        }},
    }


_CATEGORIES_SHAPE: dict[str, Any] = {
    "type": "object", "required": ["categories"],
    "properties": {"categories": {"type": "object",
                                  "additionalProperties": {"type": "string"}}},
}


def check_categories(ids: list[str], answer: dict[str, Any], schema) -> dict[str, str]:
    """{finding id: code}; every id answered once with a code of the schema.

    Validated against the shape only, then code by code, so a wrong answer gets a
    precise repair message ("S3: '13b' is not a category")."""
    validate_schema(answer, _CATEGORIES_SHAPE)
    given = answer["categories"]
    problems: list[str] = []
    missing = [i for i in ids if i not in given]
    extra = [k for k in given if k not in ids]
    if missing:
        problems.append(f"no category for finding(s) {', '.join(missing)}")
    if extra:
        problems.append(f"finding id(s) {', '.join(extra[:10])} were not asked for")
    out: dict[str, str] = {}
    for i in ids:
        if i not in given:
            continue
        code = schema.normalize(given[i])
        if code is None:
            problems.append(f"{i}: {str(given[i])[:12]!r} is not a category code of the schema")
        else:
            out[i] = code
    if problems:
        raise CheckError(problems)
    return out
