"""Apply a chain of stages to a Dataset with resume, per-row errors and a manifest.

Resume never brings ids to the driver: finished keys are read from the output's
Parquet files as a Dataset and removed from the input with a distributed
``left_anti`` join. Retry-failed reads the errors table instead and replays the
stored input rows. Workers write the Parquet files; the driver only sees one
small count row per written shard.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Sequence

import pandas as pd

from ctray.errors import UserError
from ctray.io.manifest import config_hash, library_versions, scrub_secrets
from ctray.io.output import USAGE_COLS, OutputLayout, write_shard
from ctray.pipeline.stage import ATTEMPT_COL, INPUT_COL, LIGHT_TASK, Stage

log = logging.getLogger(__name__)


class ConfigChangedError(UserError, RuntimeError):
    pass


@dataclass
class RunSpec:
    job: str
    output: str
    key_columns: list[str] = field(default_factory=lambda: ["report_id"])
    resume: bool = True
    retry_failed: bool = False
    # What decides the results (prompts, model, task options): resuming under a
    # different fingerprint would mix two experiments in one table.
    fingerprint: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    writer_batch_size: int = 256
    check_duplicate_keys: bool = True
    allow_config_change: bool = False
    join_partitions: int = 4


@dataclass
class RunSummary:
    run_id: str
    output: str
    ok: int
    failed: int
    skipped: int
    wall_time_s: float
    usage: dict[str, int]
    manifest: dict[str, Any]


def _tag_input(batch: pd.DataFrame) -> pd.DataFrame:
    """Keep the row as it entered the job, so a failure can be inspected exactly."""
    cols = [c for c in batch.columns if not c.startswith("_") and c != PREVIOUS_ATTEMPT]
    records = batch[cols].to_dict("records")
    dumped = [json.dumps(r, ensure_ascii=False, default=str) for r in records]
    if PREVIOUS_ATTEMPT in batch.columns:
        attempt = batch[PREVIOUS_ATTEMPT].astype(int) + 1
        batch = batch.drop(columns=[PREVIOUS_ATTEMPT])
    else:
        attempt = 1
    return batch.assign(**{INPUT_COL: dumped, ATTEMPT_COL: attempt})


def _latest_attempt(group: pd.DataFrame) -> pd.DataFrame:
    return group.sort_values("attempt").tail(1)


def _key_dataset(layout: OutputLayout, which: list[str], keys: list[str]):
    import ray

    files = [f for w in which for f in layout.parquet_files(w)]
    if not files:
        return None
    return ray.data.read_parquet(files, ray_remote_args=LIGHT_TASK).select_columns(keys)


PREVIOUS_ATTEMPT = "_previous_attempt"


def _unresolved_errors(layout: OutputLayout, keys: list[str], partitions: int):
    """Keys (and last attempt number) of failed rows that have not succeeded since."""
    import ray

    files = layout.parquet_files("errors")
    if not files:
        return None
    errors = ray.data.read_parquet(files, ray_remote_args=LIGHT_TASK).select_columns(keys + ["attempt"])
    done = _key_dataset(layout, ["results"], keys)
    if done is not None:
        errors = errors.join(done, join_type="left_anti", on=tuple(keys), num_partitions=partitions,
                             aggregator_ray_remote_args=LIGHT_TASK)
    latest = errors.groupby(keys).map_groups(_latest_attempt, batch_format="pandas", **LIGHT_TASK)
    return latest.rename_columns({"attempt": PREVIOUS_ATTEMPT})


def _check_fingerprint(layout: OutputLayout, spec: RunSpec, digest: str) -> dict[str, Any] | None:
    previous = layout.read_json()
    if previous and previous.get("fingerprint_hash") not in (None, digest) and not spec.allow_config_change:
        raise ConfigChangedError(
            f"{layout.root} holds results of a different configuration "
            f"(fingerprint {previous.get('fingerprint_hash')} != {digest}: prompts, model or task "
            "options changed). Use a new output folder, or set run.allow_config_change to mix them."
        )
    return previous


def run_pipeline(ds, stages: Sequence[Stage], spec: RunSpec,
                 extra_manifest: dict[str, Any] | None = None) -> RunSummary:
    for stage in stages:
        stage.preflight()
    started = time.time()
    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    layout = OutputLayout(spec.output)
    fingerprint = {"job": spec.job, **spec.fingerprint,
                   "stages": [s.describe() for s in stages]}
    digest = config_hash(fingerprint)
    previous = _check_fingerprint(layout, spec, digest)
    keys = list(spec.key_columns)
    prior_ok = layout.row_count("results")
    prior_failed = layout.row_count("errors")

    if spec.retry_failed:
        # Rows are re-read from the source, not replayed from the errors table, so
        # input validation runs again (a fixed input file is picked up).
        failed = _unresolved_errors(layout, keys, spec.join_partitions)
        if failed is None:
            log.info("ctray: no failed rows to retry in %s", layout.root)
            return _finish(layout, spec, run_id, started, fingerprint, digest, previous,
                           [], prior_ok, extra_manifest)
        ds = ds.join(failed, join_type="inner", on=tuple(keys),
                     num_partitions=spec.join_partitions, aggregator_ray_remote_args=LIGHT_TASK)
        ds = ds.map_batches(_tag_input, batch_format="pandas", **LIGHT_TASK)
    else:
        if spec.check_duplicate_keys:
            from ctray.io.corpus import find_duplicate_ids

            dups = find_duplicate_ids(ds, keys)
            if dups:
                shown = ", ".join(f"{[d[k] for k in keys]} ×{d['count()']}" for d in dups)
                raise ValueError(f"duplicate row keys {keys} in the input: {shown}. "
                                 "Ids must be unique for resume to be correct.")
        if spec.resume:
            done = _key_dataset(layout, ["results", "errors"], keys)
            if done is not None:
                ds = ds.join(done, join_type="left_anti", on=tuple(keys),
                             num_partitions=spec.join_partitions,
                             aggregator_ray_remote_args=LIGHT_TASK)
        ds = ds.map_batches(_tag_input, batch_format="pandas", **LIGHT_TASK)

    for stage in stages:
        ds = stage.apply(ds)
    counts = ds.map_batches(
        write_shard,
        fn_kwargs={"layout": layout, "key_columns": keys, "run_id": run_id},
        batch_format="pandas", batch_size=spec.writer_batch_size, **LIGHT_TASK,
    )
    summaries = counts.take_all()  # one small row per written shard
    return _finish(layout, spec, run_id, started, fingerprint, digest, previous, summaries,
                   prior_ok + (0 if spec.retry_failed else prior_failed), extra_manifest)


def _finish(layout, spec, run_id, started, fingerprint, digest, previous, summaries,
            skipped, extra_manifest) -> RunSummary:
    ok = sum(int(s["ok"]) for s in summaries)
    failed = sum(int(s["failed"]) for s in summaries)
    usage = {c: sum(int(s.get(c, 0)) for s in summaries) for c in USAGE_COLS}
    failed_by_stage: dict[str, int] = {}
    for s in summaries:
        for stage, n in json.loads(s.get("failed_by_stage", "{}")).items():
            failed_by_stage[stage] = failed_by_stage.get(stage, 0) + int(n)
    wall = time.time() - started
    this_run = {
        "run_id": run_id, "mode": "retry_failed" if spec.retry_failed else "run",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "wall_time_s": round(wall, 3), "ok": ok, "failed": failed,
        "failed_by_stage": failed_by_stage, "skipped": skipped, "usage": usage,
    }
    history = (previous or {}).get("runs", []) + [this_run]
    totals = {c: sum(r.get("usage", {}).get(c, 0) for r in history) for c in USAGE_COLS}
    manifest = {
        "job": spec.job,
        "output": layout.root,
        "config": scrub_secrets(spec.config),
        "config_hash": config_hash(spec.config),
        "fingerprint": scrub_secrets(fingerprint),
        "fingerprint_hash": digest,
        "prompt_versions": sorted({s["prompt_version"] for s in fingerprint["stages"]
                                   if s.get("prompt_version")}),
        "models": [s["backend"] for s in fingerprint["stages"] if s.get("backend")],
        "versions": library_versions(),
        "counts": {"results_rows": layout.row_count("results"),
                   "error_rows": layout.row_count("errors"),
                   "this_run": {k: this_run[k] for k in ("ok", "failed", "skipped")}},
        "usage": totals,
        "wall_time_s": round(sum(r["wall_time_s"] for r in history), 3),
        "runs": history,
        **(extra_manifest or {}),
    }
    layout.write_json(manifest)
    log.info("ctray %s: %d ok, %d failed, %d skipped in %.1fs -> %s",
             spec.job, ok, failed, skipped, wall, layout.root)
    return RunSummary(run_id, layout.root, ok, failed, skipped, wall, usage, manifest)
