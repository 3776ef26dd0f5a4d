"""ConText-style cue scope for one sentence: negation, uncertainty and their reach.

This is the ConText algorithm (Harkema et al., J Biomed Inform 2009; the basis of
medspacy's ``ConTextComponent`` and of NegEx): cue phrases found in a sentence act
on target mentions inside their *scope*, which runs forward and/or backward from the
cue up to a terminating word, the sentence end, or a word window. Overlapping cues are
resolved longest-first, so a pseudo-cue ("no change") or a longer uncertainty cue
("not excluded", "not well seen") swallows the bare negation inside it.

Why not medspacy itself: medspacy 1.3 pins spaCy < 3.8, whose thinc needs numpy < 2,
and installing it downgraded the project's numpy 2.3 (pandas 3 needs numpy >= 2);
negspacy has negation only, no uncertainty. The cue lists are ours (``patterns``),
the classification order is the CheXpert labeler's (``rules``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

NEGATED = "negated"
UNCERTAIN = "uncertain"
UNCERTAIN_PRE = "uncertain_pre"  # CheXpert's pre-negation uncertainty: beats negation
PSEUDO = "pseudo"  # looks like a cue, is not one ("no change"): only blocks others
HISTORY = "history"  # clinical question / history: mentions in scope are not findings
STABLE = "stable"  # "stable/unchanged": uncertainty for bare anatomy mentions only
TERMINATE = "terminate"

FORWARD, BACKWARD, BOTH = "forward", "backward", "both"

_WORD = re.compile(r"[A-Za-z0-9]+")


@dataclass(frozen=True)
class Cue:
    category: str
    regex: re.Pattern
    direction: str = FORWARD
    window: int = 8  # words between cue and mention
    # A comma between cue and mention ends the scope (lists after "no" must not stop).
    stop_at_comma: bool = False
    # Extra words that end this cue's scope ("with" for "normal").
    stop: re.Pattern | None = None
    name: str = ""


def cue(category: str, pattern: str, direction: str = FORWARD, window: int = 8,
        stop_at_comma: bool = False, stop: str | None = None) -> Cue:
    return Cue(category, re.compile(pattern, re.IGNORECASE), direction, window, stop_at_comma,
               re.compile(stop, re.IGNORECASE) if stop else None, pattern)


@dataclass(frozen=True)
class Hit:
    cue: Cue
    start: int
    end: int


def find_cues(sentence: str, cues: Iterable[Cue]) -> list[Hit]:
    """Every cue match, overlaps resolved longest-first (ties: the earlier one)."""
    hits = [Hit(c, m.start(), m.end()) for c in cues for m in c.regex.finditer(sentence)
            if m.end() > m.start()]
    hits.sort(key=lambda h: (-(h.end - h.start), h.start))
    kept: list[Hit] = []
    for h in hits:
        if all(h.end <= k.start or h.start >= k.end for k in kept):
            kept.append(h)
    return sorted(kept, key=lambda h: h.start)


def _n_words(text: str) -> int:
    return len(_WORD.findall(text))


def _blocked(gap: str, hit: Hit, terminators: list[Hit], lo: int, hi: int) -> bool:
    if any(lo <= t.start and t.end <= hi for t in terminators):
        return True
    if hit.cue.stop_at_comma and "," in gap:
        return True
    if hit.cue.stop is not None and hit.cue.stop.search(gap):
        return True
    return _n_words(gap) > hit.cue.window


def in_scope(hit: Hit, start: int, end: int, sentence: str, terminators: list[Hit]) -> bool:
    """Whether the mention sentence[start:end] is inside the cue's scope."""
    if hit.cue.direction in (FORWARD, BOTH) and hit.end <= start:
        return not _blocked(sentence[hit.end:start], hit, terminators, hit.end, start)
    if hit.cue.direction in (BACKWARD, BOTH) and hit.start >= end:
        return not _blocked(sentence[end:hit.start], hit, terminators, end, hit.start)
    return False


@dataclass
class SentenceContext:
    """The cues of one sentence, ready to be asked about any mention span."""

    sentence: str
    hits: list[Hit]

    @classmethod
    def build(cls, sentence: str, cues: Iterable[Cue]) -> "SentenceContext":
        return cls(sentence, find_cues(sentence, cues))

    @property
    def terminators(self) -> list[Hit]:
        return [h for h in self.hits if h.cue.category == TERMINATE]

    def categories(self, start: int, end: int) -> set[str]:
        """Categories of the cues whose scope covers sentence[start:end] (cues inside the
        mention itself count too: "non-enlarged")."""
        terms = self.terminators
        out: set[str] = set()
        for h in self.hits:
            if h.cue.category in (TERMINATE, PSEUDO):
                continue
            if start <= h.start and h.end <= end:
                out.add(h.cue.category)
            elif h.start < end and h.end > start:
                continue  # a cue overlapping the mention's edge is part of another phrase
            elif in_scope(h, start, end, self.sentence, terms):
                out.add(h.cue.category)
        return out
