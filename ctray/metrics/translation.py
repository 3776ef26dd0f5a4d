"""BLEU and ROUGE for Japanese (MeCab words) and English translations.

Conventions follow CT-RATE-JPN (Table 2), which names nltk 3.9.1 ``sentence_bleu``
and rouge-score 0.1.2 but not the tokenisation or smoothing; the choices made
here and why are in ``docs/translation_eval.md``:

* a text is one "sentence" for BLEU (a whole Findings or Impression section);
* Japanese words are MeCab (unidic-lite) tokens, punctuation tokens included,
  exactly as ``MeCab.Tagger('-Owakati').parse(text).split()`` gives them;
* BLEU-4 with uniform weights and nltk's default of *no* smoothing (a section
  without any matching 4-gram scores 0), on a 0-1 scale;
* ROUGE-1/2/L are rouge-score's F-measures, with the same word tokens handed to
  ``RougeScorer(tokenizer=...)`` (its default tokenizer deletes every non-ASCII
  character, which would score all Japanese text as empty).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
SMOOTHING_METHODS = tuple(f"method{i}" for i in range(8))
DEFAULT_WEIGHTS = (0.25, 0.25, 0.25, 0.25)


class JapaneseTokenizer:
    """MeCab word tokens; the ``tokenize`` method is what rouge-score calls."""

    lang = "ja"

    def __init__(self, keep_punct: bool = True):
        self.keep_punct = keep_punct

    def tokenize(self, text: str) -> list[str]:
        from ctray.text.tokenize import words

        return words(text or "", "ja", keep_punct=self.keep_punct)


class EnglishTokenizer:
    """Lower-cased regex words (no punctuation), for back-translation scores."""

    lang = "en"

    def __init__(self, keep_punct: bool = False):
        self.keep_punct = keep_punct  # English words never carry punctuation

    def tokenize(self, text: str) -> list[str]:
        from ctray.text.tokenize import en_words

        return [w.lower() for w in en_words(text or "")]


def get_tokenizer(lang: str, keep_punct: bool = True):
    if lang == "ja":
        return JapaneseTokenizer(keep_punct)
    if lang == "en":
        return EnglishTokenizer()
    raise ValueError(f"unsupported language {lang!r}; use 'ja' or 'en'")


def _smoothing(method: str | None):
    from nltk.translate.bleu_score import SmoothingFunction

    if method is None:
        return None
    if method not in SMOOTHING_METHODS:
        raise ValueError(f"unknown BLEU smoothing {method!r}; use one of {SMOOTHING_METHODS}")
    return getattr(SmoothingFunction(), method)


def sentence_bleu(reference: Sequence[str], hypothesis: Sequence[str],
                  weights: Sequence[float] = DEFAULT_WEIGHTS,
                  smoothing: str | None = "method0") -> float:
    """nltk ``sentence_bleu`` of token lists (one reference), 0-1."""
    from nltk.translate.bleu_score import sentence_bleu as nltk_sentence_bleu

    if not hypothesis or not reference:
        return 0.0
    with warnings.catch_warnings():
        # nltk warns for every section without a matching n-gram; the 0 is the result.
        warnings.simplefilter("ignore")
        return float(nltk_sentence_bleu([list(reference)], list(hypothesis),
                                        weights=tuple(weights),
                                        smoothing_function=_smoothing(smoothing)))


def corpus_bleu(references: Sequence[Sequence[str]], hypotheses: Sequence[Sequence[str]]) -> float:
    """sacrebleu corpus BLEU (0-1) of pre-tokenised texts (tokenize='none').

    This is sacrebleu's ``ja-mecab`` recipe with our MeCab dictionary (unidic-lite
    rather than sacrebleu's ipadic), so it is comparable within this project."""
    import sacrebleu

    hyps = [" ".join(h) for h in hypotheses]
    refs = [" ".join(r) for r in references]
    if not hyps:
        return float("nan")
    return float(sacrebleu.corpus_bleu(hyps, [refs], tokenize="none", force=True).score) / 100.0


@dataclass(frozen=True)
class PairScorer:
    """Scores (reference, hypothesis) text pairs; picklable for Ray workers."""

    lang: str = "ja"
    keep_punct: bool = True
    weights: tuple[float, ...] = DEFAULT_WEIGHTS
    smoothing: str | None = "method0"

    def tokenizer(self):
        return get_tokenizer(self.lang, self.keep_punct)

    def score(self, reference: str, hypothesis: str) -> dict[str, float | int]:
        from rouge_score.rouge_scorer import RougeScorer

        tok = self.tokenizer()
        ref, hyp = tok.tokenize(reference), tok.tokenize(hypothesis)
        out: dict[str, float | int] = {
            "ref_tokens": len(ref), "hyp_tokens": len(hyp),
            "bleu": sentence_bleu(ref, hyp, self.weights, self.smoothing),
        }
        scores = RougeScorer(list(ROUGE_TYPES), tokenizer=tok).score(reference, hypothesis)
        for name in ROUGE_TYPES:
            s = scores[name]
            out[name] = float(s.fmeasure)
            out[f"{name}_p"] = float(s.precision)
            out[f"{name}_r"] = float(s.recall)
        return out
