"""The ``stats-text`` job: characters, words, sentences and unique words per report."""

from __future__ import annotations

from pydantic import Field

from ctray.config import CorpusJobConfig
from ctray.pipeline.job import run_corpus_job
from ctray.pipeline.text_stats import TextStatsStage


class TextStatsConfig(CorpusJobConfig):
    job: str = "stats-text"
    lang: str = Field("auto", description="en, ja or auto (detected per report)")


def run_text_stats(cfg: TextStatsConfig):
    return run_corpus_job(cfg, [TextStatsStage(cfg.lang)], fingerprint={"lang": cfg.lang})
