"""Glue between a job config and the runner, shared by every corpus job."""

from __future__ import annotations

import logging
from typing import Any, Sequence

from ctray.pipeline.runner import AfterRun, RunSpec, RunSummary, run_pipeline
from ctray.pipeline.stage import Stage

log = logging.getLogger(__name__)


#: Config fields that cannot change a row's result, by dotted path: the job name, the
#: whole ``run`` section (output, resume/retry, Ray address, CPUs, block and shard sizes,
#: logging) and which rows are read (``corpus.limit``: a longer run resumes a shorter one).
RESULT_NEUTRAL_PATHS = frozenset({"job", "run", "corpus.limit", "corpus.check_duplicate_ids"})
#: Field names that cannot change a result in whichever section they occur: resources,
#: batching, rate limits, retries, timeouts, prices, caches and the *name* of a key's
#: environment variable.
RESULT_NEUTRAL_NAMES = frozenset({
    "batch_size", "chunk_batch_size", "concurrency", "num_cpus", "num_gpus",
    "cpus_per_engine", "gpu_memory_utilization", "kv_cache_gib", "max_parallel_requests",
    "requests_per_minute", "tokens_per_minute", "timeout_s", "max_retries",
    "price_per_1m_input_tokens", "price_per_1m_output_tokens", "api_key_env", "cache_dir",
})


def result_config(cfg) -> dict[str, Any]:
    """The job config minus the fields that cannot change a result: the part of every
    run fingerprint that comes from the config. Everything not allowlisted here (or in
    the config class's ``result_neutral_fields``) counts, so a new field is covered
    without anyone remembering to add it."""
    return strip_neutral(cfg.model_dump(mode="json"),
                         frozenset(getattr(type(cfg), "result_neutral_fields", ())))


def strip_neutral(data: dict[str, Any], extra: frozenset[str] = frozenset()) -> dict[str, Any]:
    """``data`` (a config dump) without the allowlisted paths and names."""
    neutral = RESULT_NEUTRAL_PATHS | extra

    def strip(node: Any, prefix: str) -> Any:
        if not isinstance(node, dict):
            return node
        return {k: strip(v, f"{prefix}{k}.") for k, v in node.items()
                if f"{prefix}{k}" not in neutral and k not in RESULT_NEUTRAL_NAMES}

    return strip(data, "")


def job_fingerprint(cfg, fingerprint: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a run's results are checked against on resume: :func:`result_config` plus
    the job's own versions (rule sources, model metadata); the runner adds each stage's
    prompt version, model and code digest."""
    return {"config": result_config(cfg), **(fingerprint or {})}


def run_spec(cfg, key_columns: Sequence[str] = ("report_id",),
             fingerprint: dict[str, Any] | None = None, output: str | None = None) -> RunSpec:
    """A RunSpec from a JobConfig's ``run`` section; the full config goes to the manifest
    and every result-deciding part of it into the fingerprint (:func:`job_fingerprint`)."""
    return RunSpec(
        job=cfg.job or type(cfg).__name__,
        output=output or cfg.run.output,
        key_columns=list(key_columns),
        resume=cfg.run.resume,
        retry_failed=cfg.run.retry_failed,
        allow_config_change=cfg.run.allow_config_change,
        writer_batch_size=cfg.run.writer_batch_size,
        rows_per_block=cfg.run.rows_per_block,
        fingerprint=job_fingerprint(cfg, fingerprint),
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
