"""The rule labeler as a teacher on spans of the training reports.

A report-level student sees a rare cue ("blunting of the costophrenic angle", "old healed
rib fracture", "possible atelectasis") only as often as the corpus has reports that carry
it: a few dozen times per epoch for Pleural Other, Fracture or an uncertain Atelectasis
among 3,500 Open-i reports, each time inside a report whose other sentences dominate the
gradient. The rules label any span of text, not only whole reports, so the stage-1 data
grows with examples the corpus never had: every distinct sentence and every pair of
adjacent sentences of the training reports, labelled by the same rules. Spans are short
(a fraction of a report's tokens), so many are cheap, and sampling them by the rarity of
their labels shows the rare cues far more often than the reports do, while the full
reports in every epoch still teach the report-level aggregation (No Finding, the strongest
mention of an observation across sentences).

Only training reports give spans: held-out and excluded (dev gold) reports never do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from ctray.tasks.cxr.schema import OBSERVATIONS


@dataclass
class SpanSet:
    texts: list[str]
    y: np.ndarray          # [n_spans, 14] class indices (encoder_model.targets)
    p: np.ndarray          # sampling probability per span (sums to 1)
    stats: dict = field(default_factory=dict)


def report_spans(text: str, max_sentences: int) -> list[str]:
    """Runs of 1..max_sentences consecutive sentences of one report."""
    from ctray.text.sentences import split_sentences

    sentences = split_sentences(text, "en")
    return [" ".join(sentences[i:i + n]) for n in range(1, max_sentences + 1)
            for i in range(len(sentences) - n + 1)]


def reading_sentences(text: str) -> list[str]:
    """The sentences the encoder's sentence reading labels one by one (the whole text when
    it has no sentence boundary): inference and the gold stage's reading loss share it."""
    return report_spans(text, 1) or [text]


def distinct_spans(texts: Iterable[str], max_sentences: int) -> list[str]:
    """Every distinct span of the reports, in first-seen order (Open-i repeats its
    boilerplate sentences thousands of times; one copy of each is enough)."""
    seen: dict[str, None] = {}
    for text in texts:
        for span in report_spans(text, max_sentences):
            key = " ".join(span.split())
            if key and key not in seen:
                seen[key] = None
    return list(seen)


def span_weights(y: np.ndarray, power: float, cap: float,
                 reference: np.ndarray | None = None) -> np.ndarray:
    """A span's weight is the rarest label it carries: per head, class weight
    (n_most_frequent_class / n_class) ** power capped at ``cap``; the span takes its
    largest over the 14 heads. Class counts come from ``reference`` (the training
    reports' labels: how often the student already sees each class) or else from ``y``.
    Normalised to a sampling distribution."""
    w = np.ones(len(y))
    if len(y) == 0:
        return w
    from ctray.tasks.cxr.encoder_model import inverse_frequency

    ref = y if reference is None else reference
    for j in range(y.shape[1]):
        k = int(max(y[:, j].max(), ref[:, j].max() if len(ref) else 0)) + 1
        counts = np.bincount(ref[:, j], minlength=k).astype(float)
        w = np.maximum(w, inverse_frequency(counts, power, cap)[y[:, j]])
    return w / w.sum()


def build_span_set(report_texts: Sequence[str], report_y: np.ndarray | None = None,
                   max_sentences: int = 2, weight_power: float = 1.0,
                   weight_max: float = 20.0) -> SpanSet:
    """The distinct spans of ``report_texts`` with their rule labels and sampling
    probabilities (rarity measured on ``report_y``, the reports' own class indices,
    when given)."""
    import pandas as pd

    from ctray.tasks.cxr.encoder_model import targets
    from ctray.tasks.cxr.rules import CxrRuleLabeler

    spans = distinct_spans(report_texts, max_sentences)
    labeler = CxrRuleLabeler()
    frame = pd.DataFrame([labeler.label(s).labels for s in spans], columns=list(OBSERVATIONS))
    y = targets(frame) if spans else np.zeros((0, len(OBSERVATIONS)), dtype=np.int64)
    p = span_weights(y, weight_power, weight_max, report_y)
    non_blank = {o: int((y[:, j] != 0).sum()) for j, o in enumerate(OBSERVATIONS)}
    return SpanSet(spans, y, p, {"spans": len(spans), "max_sentences": max_sentences,
                                 "non_blank_spans": non_blank})


def sample_spans(n: int, p: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` span indices drawn by ``p``: without replacement while the distribution has
    that many spans to give, so one epoch does not repeat a span needlessly."""
    if k <= 0 or n == 0:
        return np.zeros(0, dtype=np.int64)
    replace = k > int((p > 0).sum())
    return rng.choice(n, size=k, replace=replace, p=p).astype(np.int64)
