"""Glue between a job config and the runner, shared by every corpus job."""

from __future__ import annotations

import logging
from typing import Any, Sequence

from ctray.pipeline.runner import AfterRun, RunSpec, RunSummary, run_pipeline
from ctray.pipeline.stage import Stage

log = logging.getLogger(__name__)


def run_spec(cfg, key_columns: Sequence[str] = ("report_id",),
             fingerprint: dict[str, Any] | None = None, output: str | None = None) -> RunSpec:
    """A RunSpec from a JobConfig's ``run`` section; the full config goes to the manifest."""
    return RunSpec(
        job=cfg.job or type(cfg).__name__,
        output=output or cfg.run.output,
        key_columns=list(key_columns),
        resume=cfg.run.resume,
        retry_failed=cfg.run.retry_failed,
        allow_config_change=cfg.run.allow_config_change,
        writer_batch_size=cfg.run.writer_batch_size,
        rows_per_block=cfg.run.rows_per_block,
        fingerprint=fingerprint or {},
        config=cfg.model_dump(mode="json"),
    )


def run_corpus_job(cfg, stages: Sequence[Stage], ds=None, key_columns=("report_id",),
                   fingerprint: dict[str, Any] | None = None, output: str | None = None,
                   extra_manifest: dict[str, Any] | None = None,
                   after_run: AfterRun | None = None) -> RunSummary:
    """Read the configured corpus (unless ``ds`` is given), run the stages, report;
    ``extra_manifest`` / ``after_run`` add the job's fields to the manifest
    (:func:`~ctray.pipeline.runner.run_pipeline`)."""
    if ds is None:
        from ctray.io.corpus import read_corpus

        ds = read_corpus(cfg.corpus)
    summary = run_pipeline(ds, stages, run_spec(cfg, key_columns, fingerprint, output),
                           extra_manifest, after_run)
    print_summary(cfg.job, summary)
    return summary


def print_summary(job: str, summary: RunSummary, name: str | None = None) -> None:
    """The one line every corpus run (and every pass of a chained job) ends with."""
    where = f"[ctray {job}] " + (f"{name}: " if name else "")
    print(f"{where}{summary.ok} rows done, {summary.failed} failed, "
          f"{summary.skipped} already done; results in {summary.output}/results, "
          f"errors in {summary.output}/errors, manifest {summary.output}/manifest.json")
