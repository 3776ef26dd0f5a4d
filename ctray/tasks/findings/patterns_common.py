"""Shared pieces of the per-language finding patterns (see ``rules``).

A finding is a :class:`FindingRule`: mention regexes, an organ-context exclusion
(a "nodule" in the thyroid is not a lung nodule) and an optional ``check`` that
can veto a non-negated mention (a lymph node "below pathological size").
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

FLAGS = re.IGNORECASE


def rx(pattern: str) -> re.Pattern:
    return re.compile(pattern, FLAGS)


@dataclass(frozen=True)
class Pattern:
    regex: re.Pattern
    requires: re.Pattern | None = None  # the clause must contain this (e.g. lung context)
    forbids: re.Pattern | None = None  # the clause must not contain this
    # When set, `forbids` is only looked for within this many characters of the mention
    # (a long sentence can hold a "sequelae" band and a separate ground-glass area).
    window: int | None = None

    def allowed(self, clause: str, m: re.Match) -> bool:
        if self.forbids is None:
            return True
        if self.window is None:
            return not self.forbids.search(clause)
        lo, hi = max(0, m.start() - self.window), m.end() + self.window
        return not self.forbids.search(clause[lo:hi])


# check(clause, match) -> False vetoes the mention (it stays a non-positive mention).
Check = Callable[[str, re.Match], bool]


@dataclass(frozen=True)
class FindingRule:
    column: str
    patterns: tuple[Pattern, ...]
    # Organ context that makes a mention about something else, unless `keep` also matches.
    exclude: re.Pattern | None = None
    keep: re.Pattern | None = None
    check: Check | None = None


def P(pattern: str, requires: str | None = None, forbids: str | None = None,
      window: int | None = None) -> Pattern:
    return Pattern(rx(pattern), rx(requires) if requires else None,
                   rx(forbids) if forbids else None, window)


_MEASURE = re.compile(
    r"(\d+(?:[.,]\d+)?)\s*(?:(?:x|×|\*)\s*(\d+(?:[.,]\d+)?)\s*)?"
    r"(?:(?:x|×|\*)\s*(\d+(?:[.,]\d+)?)\s*)?"
    r"(mm|cm|ミリ|センチ)", FLAGS)


def short_axes_mm(text: str) -> list[float]:
    """Short-axis sizes (mm) of every measurement in ``text``.

    "23x11 mm" -> 11 (the smaller dimension is the short axis); "1.2 cm" -> 12.
    """
    out = []
    for m in _MEASURE.finditer(text):
        dims = [float(d.replace(",", ".")) for d in m.group(1, 2, 3) if d]
        scale = 10.0 if m.group(4).lower() in ("cm", "センチ") else 1.0
        out.append(min(dims) * scale)
    return out


# A lymph node is enlarged from 10 mm short axis (the usual CT criterion).
LYMPH_NODE_SHORT_AXIS_MM = 10.0


def lymph_node_check(strong_negative: re.Pattern, weak_negative: re.Pattern,
                     affirmative: re.Pattern) -> Check:
    """Decide whether a non-negated lymph-node mention is lymphadenopathy.

    Order: explicit "below pathological size"-type qualifiers -> measured short axis
    (>= 10 mm) -> affirmative words in the mention or clause ("lymphadenopathy",
    "enlarged", "pathological", "conglomerated") -> weak words ("millimetric", "small",
    "calcified") -> positive.
    An unqualified affirmed mention ("Mediastinal lymph nodes.") counts as positive:
    CT-RATE reports name lymph nodes when they are notable and say so when they are not.
    """

    def check(clause: str, m: re.Match) -> bool:
        if strong_negative.search(clause):
            return False
        sizes = short_axes_mm(clause)
        if sizes:
            return max(sizes) >= LYMPH_NODE_SHORT_AXIS_MM
        if affirmative.search(m.group(0)) or affirmative.search(clause):
            return True
        return not weak_negative.search(clause)

    return check


def vessel_check(coronary: re.Pattern, other_vessel: re.Pattern, valve: re.Pattern,
                 want_coronary: bool, needs_vessel: re.Pattern) -> Check:
    """Arterial vs coronary wall calcification from the vessels named in the clause.

    A plaque in "the aorta and coronary arteries" is both; in "the coronary
    arteries" only coronary; an unlocalised "atherosclerotic changes" is arterial.
    Bare "calcification" counts only when some vessel is named (valves excluded).
    """

    def check(clause: str, m: re.Match) -> bool:
        text = valve.sub(" ", clause)
        has_coronary = bool(coronary.search(text))
        has_other = bool(other_vessel.search(coronary.sub(" ", text)))
        if needs_vessel.search(m.group(0)) and not (has_coronary or has_other):
            return False
        if want_coronary:
            return has_coronary
        return has_other or not has_coronary

    return check


def reverse_effusion_check(other_before: re.Pattern, other_inside: re.Pattern) -> Check:
    """For "effusion ... <site>" mentions: the effusion must not belong to the other site.

    "Pleural effusion and pericardial thickening" is not a pericardial effusion, and
    "effusion in the pericardial space" inside a pleural mention is not pleural.
    Forward mentions ("pericardial ... effusion") are kept as they are.
    """

    def check(clause: str, m: re.Match) -> bool:
        head = m.group(0).lower()
        if not (head.startswith("effusion") or head.startswith("fluid")):
            return True
        if other_before.search(clause[:m.start()]):
            return False
        return not other_inside.search(m.group(0))

    return check
