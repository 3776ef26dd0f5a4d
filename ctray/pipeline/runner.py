"""Apply a chain of stages to a Dataset with resume, per-row errors and a manifest.

Resume never brings ids to the driver: a one-actor filter stage reads the key
columns of the output's Parquet files and drops finished rows (or, with
``retry_failed``, keeps only rows whose latest attempt failed). Retry re-reads the
source so input validation runs again. Workers write the Parquet files; the driver
only sees one small count row per written shard.
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
    # Shuffle width for jobs that join their own passes (fan-in by key).
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


PREVIOUS_ATTEMPT = "_previous_attempt"


def _read_keys(files: list[str], columns: list[str]):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ctray.io.output import resolve_fs

    tables = []
    for uri in files:
        filesystem, path = resolve_fs(uri)
        tables.append(pq.read_table(path, columns=columns, filesystem=filesystem))
    return pa.concat_tables(tables) if tables else None


def _key_tuples(table, keys: list[str]):
    return zip(*[[str(v) for v in table.column(k).to_pylist()] for k in keys])


class _ResumeFilter:
    """Drops finished rows (or, for retry, keeps only unresolved failures).

    Runs as a Ray Data actor: each worker reads just the key columns of the output's
    Parquet files once, so finished ids never pass through the driver. (Ray 2.60's
    hash join failed on empty partitions here, which is why this is not a join.)"""

    def __init__(self, layout: OutputLayout, keys: list[str], retry_failed: bool):
        self.keys = keys
        self.retry_failed = retry_failed
        results = _read_keys(layout.parquet_files("results"), keys)
        done = set(_key_tuples(results, keys)) if results is not None else set()
        if retry_failed:
            errors = _read_keys(layout.parquet_files("errors"), keys + ["attempt"])
            self.unresolved: dict[tuple, int] = {}
            if errors is not None:
                for key, attempt in zip(_key_tuples(errors, keys), errors.column("attempt").to_pylist()):
                    if key not in done:
                        self.unresolved[key] = max(int(attempt), self.unresolved.get(key, 0))
        else:
            errors = _read_keys(layout.parquet_files("errors"), keys)
            if errors is not None:
                done.update(_key_tuples(errors, keys))
            self.done = done

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        batch = batch.reset_index(drop=True)
        tuples = list(zip(*[batch[k].astype(str) for k in self.keys])) if len(batch) else []
        if self.retry_failed:
            mask = [t in self.unresolved for t in tuples]
            out = batch[mask].copy()
            out[PREVIOUS_ATTEMPT] = [self.unresolved[t] for t in tuples if t in self.unresolved]
            return out
        return batch[[t not in self.done for t in tuples]]


def _resume_filter(ds, layout: OutputLayout, keys: list[str], retry_failed: bool):
    from ray.data import ActorPoolStrategy

    return ds.map_batches(_ResumeFilter, fn_constructor_args=(layout, keys, retry_failed),
                          batch_format="pandas", compute=ActorPoolStrategy(size=1), **LIGHT_TASK)


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
        if prior_failed == 0:
            log.info("ctray: no failed rows to retry in %s", layout.root)
            return _finish(layout, spec, run_id, started, fingerprint, digest, previous,
                           [], prior_ok, extra_manifest)
        ds = _resume_filter(ds, layout, keys, retry_failed=True)
    else:
        if spec.check_duplicate_keys:
            from ctray.io.corpus import find_duplicate_ids

            dups = find_duplicate_ids(ds, keys)
            if dups:
                shown = ", ".join(f"{[d[k] for k in keys]} ×{d['count()']}" for d in dups)
                raise ValueError(f"duplicate row keys {keys} in the input: {shown}. "
                                 "Ids must be unique for resume to be correct.")
        if spec.resume and prior_ok + prior_failed:
            ds = _resume_filter(ds, layout, keys, retry_failed=False)
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
