"""The demo job: a small end-to-end chain on the bundled sample reports.

read → text statistics → an LLM yes/no question per report (constrained to the two
options) → Parquet + manifest, then a comparison of the answers with the sample's
gold labels. Runs on a laptop: local Ray, CPU, the offline GGUF model by default.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pandas as pd
from pydantic import Field

from ctray.config import LLMJobConfig, offline_backend, sample_path
from ctray.io.corpus import CorpusConfig
from ctray.llm import registry
from ctray.llm.config import BackendConfig
from ctray.llm.task import LLMStage
from ctray.pipeline.job import run_corpus_job
from ctray.pipeline.text_stats import TextStatsStage
from ctray.tasks.demo.llm_tasks import FindingQuestion


def _default_corpus() -> CorpusConfig:
    # The whole bundled sample (240 reports): the demo shows batch throughput, which a
    # couple of dozen rows would hide behind the engine start.
    return CorpusConfig(path=sample_path("sample_reports_en.csv"))


def _default_backend() -> BackendConfig:
    return offline_backend(max_tokens=4, batch_size=8)


class DemoConfig(LLMJobConfig):
    #: the agreement with gold labels is computed after the run
    result_neutral_fields: ClassVar[frozenset[str]] = frozenset({"gold_labels", "gold_column"})
    job: str = "demo"
    corpus: CorpusConfig = Field(
        default_factory=_default_corpus, description="the reports to read (path, columns, limit)")
    backend: BackendConfig = Field(
        default_factory=_default_backend, description="the LLM backend (kind, model, batching)")
    finding: str = Field("a pleural effusion", description="what the yes/no question asks about")
    gold_labels: str | None = Field(
        default_factory=lambda: sample_path("sample_labels.csv"), description="labels CSV to "
        "compare the answers with (None: no comparison)")
    gold_column: str = Field(
        "Pleural effusion", description="the gold label column for the finding")


def run_demo(cfg: DemoConfig):
    stages = [TextStatsStage(), LLMStage(FindingQuestion(cfg.finding), cfg.backend)]
    print(describe_compute(cfg.backend), flush=True)
    summary = run_corpus_job(cfg, stages, fingerprint={"finding": cfg.finding})
    if cfg.gold_labels:
        report = compare_with_gold(summary.output, cfg.gold_labels, cfg.gold_column)
        if report:
            print(report)
    return summary


def describe_compute(backend) -> str:
    """Which CPU the demo runs on and the dtype that follows from it (a first run on
    a laptop should say why it is as fast or slow as it is)."""
    from ctray.hardware import machine_info

    machine, engine = machine_info(), registry.engine(backend)
    flags = ", ".join(machine["cpu_flags"]) or "none of note"
    line = f"[ctray demo] CPU: {machine['cpu_model']} ({machine['cpus']} cores; flags: {flags})"
    if "dtype" in engine:
        line += f"; engine dtype {engine['dtype']} ({engine['dtype_reason']})"
    return line


def compare_with_gold(output: str, gold_csv: str, gold_column: str) -> str | None:
    """Agreement of the answers with the gold label (the outputs are small here)."""
    import pyarrow.parquet as pq

    from ctray.io.output import OutputLayout

    files = OutputLayout(output).parquet_files("results")
    if not files:
        return None
    answers = pd.concat(pq.read_table(f, columns=["report_id", "answer"]).to_pandas() for f in files)
    gold = pd.read_csv(gold_csv, usecols=["VolumeName", gold_column])
    merged = answers.merge(gold, left_on="report_id", right_on="VolumeName")
    if merged.empty:
        return None
    predicted = (merged["answer"] == "yes").astype(int)
    agree = float((predicted == merged[gold_column].astype(int)).mean())
    return (f"[ctray demo] '{gold_column}': the model said yes for {int(predicted.sum())} of "
            f"{len(merged)} reports; gold positives {int(merged[gold_column].sum())}; "
            f"agreement {agree:.2f}")
