"""The LEAVS label schema: organs, finding types, certainty and urgency codes.

Spellings and column orders are those of the LEAVS release CSVs
(``parsing_results_llm_*.csv`` and ``amos_test_annotations.csv``), so frames read
from those files can be indexed with these constants directly.

Certainty codes (``type_annotation == "labels"``)::

     1  present (mentioned as present)
     0  absent (mentioned as absent / very unlikely)
    -1  uncertain because the radiologist was not sure
    -2  not mentioned
    -3  uncertain because of ambiguous language or a mention of a broad area only

Urgency codes (``type_annotation == "urgency"``): 0 normal/expected/chronic,
1 low, 2 medium, 3 high; LEAVS writes -1 where a finding type has no urgency
(it was not found), the human annotation file leaves the cell empty.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import IntEnum

import numpy as np

# Paper order (Sec. 2); the release CSVs use these exact lower-case spellings.
ORGANS: tuple[str, ...] = (
    "liver", "gallbladder", "spleen", "right kidney", "left kidney",
    "pancreas", "stomach", "small bowel", "large bowel",
)
ORGAN_ABBREVIATIONS: dict[str, str] = {
    "liver": "Liver", "gallbladder": "GBl", "spleen": "Spleen",
    "right kidney": "RKid", "left kidney": "LKid", "pancreas": "Pancreas",
    "stomach": "Stomach", "small bowel": "SBow", "large bowel": "LBow",
    "kidneys": "Kidneys", "bowels": "Bowels",
}
# Paired organs the paper joins for "any abnormality" (Table 2) and urgency (Table 4).
ORGAN_GROUPS: dict[str, tuple[str, ...]] = {
    "liver": ("liver",), "gallbladder": ("gallbladder",), "spleen": ("spleen",),
    "kidneys": ("right kidney", "left kidney"), "pancreas": ("pancreas",),
    "stomach": ("stomach",), "bowels": ("small bowel", "large bowel"),
}

# The 11 finding types, in the column order of the LEAVS output CSV.
FINDING_TYPES: tuple[str, ...] = (
    "normal", "absent", "adjacent", "quality", "postsurgical", "anatomy",
    "device", "enlarged", "atrophy", "diffuse", "focal",
)


class Certainty(IntEnum):
    PRESENT = 1
    ABSENT = 0
    UNCERTAIN = -1
    NOT_MENTIONED = -2
    AMBIGUOUS = -3


class Urgency(IntEnum):
    NORMAL = 0  # normal, expected or chronic: no action needed
    LOW = 1     # could cause problems in the future
    MEDIUM = 2  # requires treatment
    HIGH = 3    # requires immediate treatment


URGENCY_MISSING = -1  # LEAVS output: finding type not found, so no urgency

# The paper (and MAPLEZ before it) scores "radiologist not sure" as a positive
# label; ambiguity/broad-area mentions and non-mentions are negatives.
POSITIVE_CERTAINTIES: frozenset[int] = frozenset({Certainty.PRESENT, Certainty.UNCERTAIN})

# Ordering used to OR several findings into one: the union is only "absent" if every
# component is absent, "not mentioned" beats "absent", and any hint of presence wins.
CERTAINTY_RANK: dict[int, int] = {
    Certainty.ABSENT: 0, Certainty.NOT_MENTIONED: 1, Certainty.AMBIGUOUS: 2,
    Certainty.UNCERTAIN: 3, Certainty.PRESENT: 4,
}
_RANK_TO_CERTAINTY = {rank: code for code, rank in CERTAINTY_RANK.items()}

# The seven vision-supervision outputs (Sec. 2, last paragraph), named with the
# column suffixes of the release annotation file.
MERGED_TYPES: dict[str, tuple[str, ...]] = {
    "postsurgical_absent": ("postsurgical", "absent"),
    "quality": ("quality",),
    "anatomy": ("anatomy",),
    "enlarged_atrophy": ("enlarged", "atrophy"),  # "Size"
    "device": ("device",),
    "diffuse": ("diffuse",),
    "focal": ("focal",),
}
MERGED_TYPE_NAMES: dict[str, str] = {
    "postsurgical_absent": "PS", "quality": "Quality", "anatomy": "Anatomy",
    "enlarged_atrophy": "Size", "device": "Device", "diffuse": "Diffuse", "focal": "Focal",
}
# The five merged types the human annotators labelled for AMOS-MM.
ANNOTATED_TYPES: tuple[str, ...] = (
    "quality", "postsurgical_absent", "enlarged_atrophy", "diffuse", "focal",
)
# "Any abnormality" (Table 2) = Size + Focal + Diffuse + Postsurgical + Absent;
# quality, anatomy, device, adjacent and normal do not make an organ abnormal.
ABNORMALITY_TYPES: tuple[str, ...] = (
    "postsurgical_absent", "enlarged_atrophy", "diffuse", "focal",
)


def merge_certainty(codes: Iterable[int]) -> int:
    """Certainty of the union (logical OR) of several findings."""
    ranks = [CERTAINTY_RANK[int(c)] for c in codes]
    if not ranks:
        raise ValueError("merge_certainty needs at least one code")
    return int(_RANK_TO_CERTAINTY[max(ranks)])


def merge_certainty_array(codes: np.ndarray, axis: int = -1) -> np.ndarray:
    """Vectorised :func:`merge_certainty` over ``axis`` of an integer array."""
    codes = np.asarray(codes, dtype=int)
    lookup = np.full(8, -1)  # index code + 3 -> rank
    for code, rank in CERTAINTY_RANK.items():
        lookup[code + 3] = rank
    ranks = lookup[codes + 3]
    if (ranks < 0).any():
        raise ValueError(f"unknown certainty code in {np.unique(codes)}")
    back = np.array([_RANK_TO_CERTAINTY[r] for r in range(5)])
    return back[ranks.max(axis=axis)]


def merge_urgency(values: Iterable[float | None]) -> float | None:
    """Urgency of a merged finding: the most urgent component, None if none has one."""
    present = [float(v) for v in values
               if v is not None and not np.isnan(v) and v != URGENCY_MISSING]
    return max(present) if present else None


def is_positive(code: int) -> bool:
    """Binarisation used in the LEAVS evaluation (present or radiologist unsure)."""
    return int(code) in POSITIVE_CERTAINTIES


def binarize(codes: np.ndarray) -> np.ndarray:
    """Vectorised :func:`is_positive`, as 0/1 integers."""
    return np.isin(np.asarray(codes, dtype=int), list(POSITIVE_CERTAINTIES)).astype(int)


def merge_label_row(row: Mapping[str, int],
                    merged_types: Mapping[str, tuple[str, ...]] = MERGED_TYPES) -> dict[str, int]:
    """Merge one organ's 11 finding-type certainties into the merged types.

    ``row`` maps finding type (see :data:`FINDING_TYPES`) to certainty code, e.g. one
    ``labels`` row of the LEAVS output; the result maps each merged type to the
    certainty of the union of its components.
    """
    return {name: merge_certainty(row[c] for c in parts)
            for name, parts in merged_types.items()}
