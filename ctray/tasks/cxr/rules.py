"""CheXpert-style rule labeler for chest X-ray reports (14 observations x 4 classes).

Per sentence: mentions of each observation (``patterns.TERMS``) -> classification of
each mention by the cues whose scope covers it (``context``), in the CheXpert
labeler's order: pre-negation uncertainty (-1) -> negation (0) -> post-negation
uncertainty (-1) -> positive (1). Per report the mentions of an observation aggregate
as 1 > -1 > 0 (CheXpert's aggregator); no mention = blank. Then Lung Opacity takes
its children's 1/-1 (the conventions' parent rule), "CHF" adds a Cardiomegaly -1
mention, and No Finding is 1 only when no pathology and no other abnormality is
positive or uncertain. Conventions: ``docs/cxr_labeling.md``.

The labeler never logs report text; the evidence sentence per label goes to the
caller only.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import pandas as pd

from ctray.tasks.cxr.context import (HISTORY, NEGATED, STABLE, UNCERTAIN, UNCERTAIN_PRE,
                                     SentenceContext)
from ctray.tasks.cxr.patterns import (AT, CM, CO, CUES, EC, ED, LL, LO, OTHER, PN, SD, TERMS,
                                      Term)
from ctray.tasks.cxr.schema import (BLANK, EVIDENCE_COLUMNS, NEGATIVE, OBS_SNAKE, OBSERVATIONS,
                                    POSITIVE, UNCERTAIN as UNCERTAIN_VALUE, EVIDENCE_PREFIX)
from ctray.text.sentences import split_sentences

NO_FINDING = "No Finding"
PATHOLOGIES = tuple(o for o in OBSERVATIONS if o not in (NO_FINDING, SD))
OPACITY_CHILDREN = (LL, ED, CO, PN, AT)
# Priority when several mentions of one observation disagree: 1 > -1 > 0.
_RANK = {POSITIVE: 3, UNCERTAIN_VALUE: 2, NEGATIVE: 1}
_CLAUSE_BREAK = re.compile(r"[,;:]|\b(?:but|however|although|with|and\s+there)\b", re.I)
_PROMINENT = re.compile(r"^prominen", re.I)
_CHF = re.compile(r"\bchf\b|\bheart\s+failure\b", re.I)
_XXXX = re.compile(r"\bX{2,}\b")


@dataclass
class Mention:
    observation: str
    text: str
    sentence: str
    value: float  # 1.0 / 0.0 / -1.0
    kind: str
    cues: tuple[str, ...] = ()


@dataclass
class RuleResult:
    labels: dict[str, float]  # observation -> 1.0/0.0/-1.0/NaN
    evidence: dict[str, str | None]
    mentions: list[Mention] = field(default_factory=list)

    def row(self) -> dict[str, object]:
        """The CheXpert columns plus ``evidence_<observation>`` columns."""
        return {**self.labels,
                **{f"{EVIDENCE_PREFIX}{OBS_SNAKE[o]}": self.evidence[o] for o in OBSERVATIONS}}


def _clause_around(sentence: str, start: int, end: int) -> str:
    """The clause holding sentence[start:end] (for anatomy qualifiers like "enlarged")."""
    lo = 0
    for m in _CLAUSE_BREAK.finditer(sentence, 0, start):
        lo = m.end()
    nxt = _CLAUSE_BREAK.search(sentence, end)
    hi = nxt.start() if nxt else len(sentence)
    return sentence[lo:start] + " " + sentence[end:hi]


def _term_matches(sentence: str) -> list[tuple[Term, re.Match]]:
    """Term matches; for one observation a match inside a longer one (or an anatomy
    match overlapping a finding match) is dropped: "enlarged heart" is one mention."""
    found = [(t, m) for t in TERMS for m in t.regex.finditer(sentence) if m.end() > m.start()
             and not t.excluded(sentence, m)]
    kept: list[tuple[Term, re.Match]] = []
    order = sorted(found, key=lambda tm: (tm[0].kind == "anatomy", -(tm[1].end() - tm[1].start())))
    for t, m in order:
        clash = any(set(t.observations) & set(k.observations)
                    and m.start() < km.end() and km.start() < m.end() for k, km in kept)
        if not clash:
            kept.append((t, m))
    return kept


def classify(term: Term, m: re.Match, ctx: SentenceContext) -> tuple[float | None, set[str]]:
    """The mention's class (None: not a finding statement, e.g. history or a bare
    anatomy name) and the cue categories that decided it."""
    cats = ctx.categories(m.start(), m.end())
    if HISTORY in cats:
        return None, cats
    if term.kind == "clear":
        return NEGATIVE, cats
    if UNCERTAIN_PRE in cats:
        return UNCERTAIN_VALUE, cats
    if NEGATED in cats:
        return NEGATIVE, cats
    if UNCERTAIN in cats:
        return UNCERTAIN_VALUE, cats
    if term.kind == "anatomy":
        clause = _clause_around(ctx.sentence, m.start(), m.end())
        q = term.abnormal.search(clause) if term.abnormal is not None else None
        if q is not None:
            return (UNCERTAIN_VALUE if _PROMINENT.match(q.group(0)) else POSITIVE), cats
        if STABLE in cats:
            return UNCERTAIN_VALUE, cats
        return None, cats
    if term.kind == "sign":
        return UNCERTAIN_VALUE, cats
    return POSITIVE, cats


def _stronger(a: float, b: float) -> bool:
    return _RANK[a] > _RANK[b]


class CxrRuleLabeler:
    """Label English chest X-ray report text with the 14 CheXpert observations."""

    def mentions(self, text: str) -> list[Mention]:
        if not isinstance(text, str) or not text.strip():
            return []
        # De-identification placeholders are unknown words, never findings.
        text = _XXXX.sub("xxxx", text)
        out: list[Mention] = []
        for sentence in split_sentences(text, "en"):
            ctx = SentenceContext.build(sentence, CUES)
            for term, m in _term_matches(sentence):
                value, cats = classify(term, m, ctx)
                if value is None:
                    continue
                observations = term.observations
                # "Enlarged/prominent cardiomediastinal silhouette" states the mediastinum;
                # the heart only shares the normal / stable statements (conventions §4, §5).
                if (EC in observations and CM in observations and term.kind == "anatomy"
                        and not cats & {NEGATED, UNCERTAIN, UNCERTAIN_PRE, STABLE}):
                    observations = (EC,)
                for obs in observations:
                    out.append(Mention(obs, m.group(0), sentence, value, term.kind,
                                       tuple(sorted(cats))))
                # CheXpert: a positive or uncertain "CHF" adds a Cardiomegaly -1 mention.
                if ED in observations and value != NEGATIVE and _CHF.search(m.group(0)):
                    out.append(Mention(CM, m.group(0), sentence, UNCERTAIN_VALUE, "chf"))
        return out

    def label(self, text: str) -> RuleResult:
        mentions = self.mentions(text)
        labels: dict[str, float] = dict.fromkeys(OBSERVATIONS, BLANK)
        evidence: dict[str, str | None] = dict.fromkeys(OBSERVATIONS, None)
        blocked = False
        for mn in mentions:
            if mn.observation == OTHER:
                blocked = blocked or mn.value != NEGATIVE
                continue
            current = labels[mn.observation]
            if math.isnan(current) or _stronger(mn.value, current):
                labels[mn.observation] = mn.value
                evidence[mn.observation] = mn.sentence
        # Lung Opacity is the parent of its children's 1 / -1 (conventions §5).
        for child in OPACITY_CHILDREN:
            value = labels[child]
            if value in (POSITIVE, UNCERTAIN_VALUE):
                current = labels[LO]
                if math.isnan(current) or _stronger(value, current):
                    labels[LO] = value
                    evidence[LO] = evidence[child]
        # No Finding: 1 only with no positive/uncertain pathology and no other abnormality.
        if not blocked and not any(labels[o] in (POSITIVE, UNCERTAIN_VALUE) for o in PATHOLOGIES):
            labels[NO_FINDING] = POSITIVE
        return RuleResult(labels, evidence, mentions)

    def label_batch(self, df: pd.DataFrame, text_column: str) -> pd.DataFrame:
        """``df`` plus the 14 observation columns (float, NaN = blank) and evidence columns."""
        rows = [self.label(t).row() for t in df[text_column].tolist()]
        out = pd.DataFrame(rows, index=df.index, columns=[*OBSERVATIONS, *EVIDENCE_COLUMNS])
        out[list(OBSERVATIONS)] = out[list(OBSERVATIONS)].astype("float64")
        keep = df.drop(columns=[c for c in out.columns if c in df.columns])
        return pd.concat([keep, out], axis=1)
