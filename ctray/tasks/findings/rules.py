"""Rule-based labeler for the 18 CT-RATE findings (English and Japanese reports).

Per sentence and clause, each finding's mention regexes are matched; a mention
counts as positive unless it is negated in its clause (``negation``), sits in an
excluded organ context (a thyroid "nodule"), or fails the finding's check (lymph
nodes "below pathological size", coronary-only plaques for arterial wall
calcification). A report is positive for a finding when any mention is positive.

The labeler never logs report text; evidence (the sentence that made a finding
positive) is returned to the caller only.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

import pandas as pd

from ctray.tasks.findings.negation import (
    negated_en,
    negated_ja,
    split_clauses_en,
    split_clauses_ja,
)
from ctray.tasks.findings.patterns_common import FindingRule
from ctray.tasks.findings.patterns_en import RULES_EN
from ctray.tasks.findings.patterns_ja import RULES_JA
from ctray.tasks.findings.schema import FINDING_COLUMNS
from ctray.text.sentences import detect_lang, split_sentences

EVIDENCE_PREFIX = "evidence_"


@dataclass
class Mention:
    column: str
    text: str
    sentence: str
    positive: bool
    reason: str  # "positive" | "negated" | "excluded" | "qualified"


@dataclass
class RuleResult:
    labels: dict[str, int]
    evidence: dict[str, str | None]
    lang: str = "en"
    mentions: list[Mention] = field(default_factory=list)


_LANG_RULES = {"en": RULES_EN, "ja": RULES_JA}
_CLAUSES = {"en": split_clauses_en, "ja": split_clauses_ja}
_NEGATED = {"en": negated_en, "ja": negated_ja}


def _normalise(text: str) -> str:
    # NFKC folds full-width digits/letters and half-width katakana (１０ｍｍ -> 10mm).
    return unicodedata.normalize("NFKC", text)


def _classify(rule: FindingRule, clause: str, m: re.Match, lang: str) -> str:
    if rule.exclude is not None and rule.exclude.search(clause) and not (
            rule.keep is not None and rule.keep.search(clause)):
        return "excluded"
    if _NEGATED[lang](clause, m.start(), m.end()):
        return "negated"
    if rule.check is not None and not rule.check(clause, m):
        return "qualified"
    return "positive"


def _clause_mentions(rule: FindingRule, clause: str, sentence: str, lang: str) -> list[Mention]:
    found = []
    for pat in rule.patterns:
        if pat.requires is not None and not pat.requires.search(clause):
            continue
        for m in pat.regex.finditer(clause):
            if not pat.allowed(clause, m):
                continue
            reason = _classify(rule, clause, m, lang)
            found.append(Mention(rule.column, m.group(0), sentence, reason == "positive", reason))
    return found


class RuleLabeler:
    """Label report text with the 18 findings. ``lang``: "en", "ja" or "auto" (per text)."""

    def __init__(self, lang: str = "auto"):
        if lang not in ("auto", "en", "ja"):
            raise ValueError(f"unsupported language {lang!r}; use 'en', 'ja' or 'auto'")
        self.lang = lang

    def mentions(self, text: str) -> tuple[str, list[Mention]]:
        """Every finding mention in ``text`` with its decision (for inspection and tests)."""
        if not isinstance(text, str) or not text.strip():
            return (self.lang if self.lang != "auto" else "en"), []
        text = _normalise(text)
        lang = detect_lang(text) if self.lang == "auto" else self.lang
        rules = _LANG_RULES[lang]
        out: list[Mention] = []
        for sentence in split_sentences(text, lang):
            for clause in _CLAUSES[lang](sentence):
                for rule in rules:
                    out.extend(_clause_mentions(rule, clause, sentence, lang))
        return lang, out

    def label(self, text: str) -> RuleResult:
        lang, mentions = self.mentions(text)
        labels = dict.fromkeys(FINDING_COLUMNS, 0)
        evidence: dict[str, str | None] = dict.fromkeys(FINDING_COLUMNS, None)
        for mention in mentions:
            if mention.positive and not labels[mention.column]:
                labels[mention.column] = 1
                evidence[mention.column] = mention.sentence
        return RuleResult(labels, evidence, lang, mentions)

    def label_batch(self, df: pd.DataFrame, text_column: str) -> pd.DataFrame:
        """``df`` plus the 18 label columns (0/1) and ``evidence_<column>`` columns."""
        results = [self.label(t) for t in df[text_column].tolist()]
        labels = pd.DataFrame([r.labels for r in results], index=df.index,
                              columns=list(FINDING_COLUMNS)).astype("int64")
        evidence = pd.DataFrame([r.evidence for r in results], index=df.index,
                                columns=list(FINDING_COLUMNS)).add_prefix(EVIDENCE_PREFIX)
        evidence = evidence.astype(object).where(evidence.notna(), None)
        out = df.drop(columns=[c for c in (*labels.columns, *evidence.columns) if c in df.columns])
        return pd.concat([out, labels, evidence], axis=1)
