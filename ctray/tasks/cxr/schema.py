"""The 14 CheXpert observations and the four classes, in the CheXpert labeler's layout.

A label table has one row per report and the 14 display names as columns (the
order of the CheXpert / MIMIC-CXR label CSVs), each 1.0 (positive), 0.0
(negative), -1.0 (uncertain) or empty (blank: not mentioned). Inside ctray frames
blank is NaN, so a column is float64 and round-trips through CSV and Parquet.
"""

from __future__ import annotations

import math
import re
from typing import Any

OBSERVATIONS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0
BLANK = float("nan")
CLASS_VALUES: tuple[float, ...] = (POSITIVE, NEGATIVE, UNCERTAIN)
# Words used in LLM answers and reports; "blank" = not mentioned.
CLASS_WORDS: dict[str, float] = {"positive": POSITIVE, "negative": NEGATIVE,
                                 "uncertain": UNCERTAIN, "blank": BLANK}


def snake(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


OBS_SNAKE: dict[str, str] = {o: snake(o) for o in OBSERVATIONS}
EVIDENCE_PREFIX = "evidence_"
EVIDENCE_COLUMNS: tuple[str, ...] = tuple(f"{EVIDENCE_PREFIX}{OBS_SNAKE[o]}" for o in OBSERVATIONS)

_BY_KEY = {re.sub(r"[\s_\-]+", " ", o).lower(): o for o in OBSERVATIONS}


def observation_for(key: str) -> str | None:
    """The display name for a header or JSON key in any common spelling
    ("Pleural Effusion", "pleural_effusion", "pleural-effusion"), or None."""
    norm = re.sub(r"[\s_\-]+", " ", str(key)).strip().lower()
    if norm == "airspace opacity":  # the name in early CheXpert labeler releases
        norm = "lung opacity"
    return _BY_KEY.get(norm)


def is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def to_class(value: Any) -> float:
    """Normalise a cell (1, "1.0", -1, "", None, NaN, "positive") to 1.0/0.0/-1.0/NaN;
    ValueError for anything else."""
    if is_blank(value):
        return BLANK
    if isinstance(value, str):
        text = value.strip().lower()
        if text in CLASS_WORDS:
            return CLASS_WORDS[text]
        if text in ("", "nan", "none"):
            return BLANK
        value = float(text)
    number = float(value)
    if math.isnan(number):
        return BLANK
    if number not in CLASS_VALUES:
        raise ValueError(f"{value!r} is not one of 1, 0, -1 or blank")
    return number
