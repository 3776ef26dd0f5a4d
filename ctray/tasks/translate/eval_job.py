"""Translation quality (CT-RATE-JPN Table 2) and text statistics (Table 1).

Hypotheses (e.g. machine translations) and references (e.g. radiologist-refined
translations) are read from Parquet/CSV/JSONL files or a translate job's output
folder, in long (one row per report and section) or wide (one column per section)
layout, and joined on report_id + section. Per pair: BLEU and ROUGE-1/2/L (see
``ctray.metrics.translation``); per section: mean (SD) and a sacrebleu corpus BLEU.
Scoring runs locally for small sets and as a Ray Data map over large ones (the
ROUGE-L LCS is pure Python, ~0.1 s for a 300-word section).
"""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ctray.config import JobConfig
from ctray.metrics.translation import DEFAULT_WEIGHTS
from ctray.tasks.translate.evaluation import evaluate

log = logging.getLogger(__name__)


class TranslationInput(BaseModel):
    """One side of the comparison and how to read it."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="CSV/Parquet/JSONL file, or a translate job output folder")
    label: str = Field("hypothesis", description="name of this side in the report")
    lang: str = Field("ja", description="language of this side's text")
    format: Literal["auto", "csv", "parquet", "jsonl"] = Field(
        "auto", description="file format; auto: from the file name")
    id_column: str = Field("report_id", description="the report id column")
    section_column: str | None = Field(
        "section", description="Long layout: one row per (id, section).")
    text_column: str = Field("translation", description="the text column (long layout)")
    sections: dict[str, str] = Field(
        default_factory=dict, description="Wide layout (section_column: null): section name -> "
        "column.")


class TranslateEvalConfig(JobConfig):
    job: str = "eval-translate"
    hypotheses: TranslationInput = Field(description="the translations to score")
    references: TranslationInput = Field(description="the reference translations")
    sections: list[str] | None = Field(None, description="Only these sections (None: every "
                                       "section found on both sides).")
    lang: Literal["ja", "en"] = Field("ja", description="Language of the word tokens that "
                                      "BLEU/ROUGE count.")
    keep_punct: bool = Field(True, description="count punctuation tokens")
    bleu_weights: list[float] = Field(
        default_factory=lambda: list(DEFAULT_WEIGHTS), description="n-gram weights of BLEU "
        "(default: 1- to 4-grams equally)")
    bleu_smoothing: str | None = Field(
        "method0", description="NLTK smoothing method of sentence BLEU")
    corpus_bleu: bool = Field(True, description="also report corpus-level BLEU")
    parallel_threshold: int = Field(2000, description="Above this many pairs the scoring runs as "
                                    "a Ray Data job.")
    decimals: int = Field(3, description="decimals in the report tables")


# ----------------------------------------------------------------------------- reading


# ----------------------------------------------------------------------------- scoring


# ----------------------------------------------------------------------------- report


def run_translate_eval(cfg: TranslateEvalConfig):
    return evaluate(cfg)
