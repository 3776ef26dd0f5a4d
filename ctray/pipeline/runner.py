"""Apply a chain of stages to a Dataset with resume, per-row errors and a manifest.

Resume never brings ids to the driver: a light filter task reads the key
columns of the output's Parquet files (once per worker process) and drops finished rows (or, with
``retry_failed``, keeps only rows whose latest attempt failed). Retry re-reads the
source so input validation runs again. Workers write the Parquet files; the driver
only sees one small count row per written shard.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from ctray.errors import UserError
from ctray.io.manifest import config_hash, job_manifest, scrub_secrets
from ctray.io.output import INPUT_COLS_SEP, USAGE_COLS, OutputLayout, write_shard
from ctray.pipeline.ray_session import pass_scheduling
from ctray.pipeline.stage import ATTEMPT_COL, INPUT_COLS_COL, LIGHT_TASK, Stage

log = logging.getLogger(__name__)


class ConfigChangedError(UserError, RuntimeError):
    pass


class DuplicateKeyError(UserError, ValueError):
    pass


# Status of a run in the manifest's history: written as UNFINISHED before the first
# row, replaced when the run ends; a killed run keeps UNFINISHED.
UNFINISHED, FINISHED, FAILED = "unfinished", "finished", "failed"


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
    # Rows per block entering the stages (None: writer_batch_size); bounds what a kill loses.
    rows_per_block: int | None = None
    check_duplicate_keys: bool = True
    allow_config_change: bool = False


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
    """Remember which columns the row entered the job with, and its attempt number.

    Only the column names travel with the row (one short string); the errors table
    serializes those columns for failed rows only."""
    cols = [c for c in batch.columns if not c.startswith("_") and c != PREVIOUS_ATTEMPT]
    names = INPUT_COLS_SEP.join(cols)
    if PREVIOUS_ATTEMPT in batch.columns:
        attempt = batch[PREVIOUS_ATTEMPT].astype(int) + 1
        batch = batch.drop(columns=[PREVIOUS_ATTEMPT])
    else:
        attempt = 1
    return batch.assign(**{INPUT_COLS_COL: names, ATTEMPT_COL: attempt})


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


def _key_hashes(columns: list[list[Any]]) -> np.ndarray:
    """64-bit digests of key tuples: a million finished rows cost 8 MB per worker,
    not a set of Python strings (collision odds ~1e-8 at that size)."""
    out = np.empty(len(columns[0]) if columns else 0, dtype=np.uint64)
    for i, values in enumerate(zip(*columns)):
        digest = hashlib.blake2b("\x1f".join(map(str, values)).encode("utf-8"), digest_size=8)
        out[i] = int.from_bytes(digest.digest(), "little")
    return out


def _table_hashes(table, keys: list[str]) -> np.ndarray:
    return _key_hashes([table.column(k).to_pylist() for k in keys])


class _ResumeIndex:
    """Which keys are finished (or, for retry, unresolved failures and their attempt).

    Built from the key columns of the output's Parquet files, once per worker process
    and run (see ``_resume_filter``), so finished ids never pass through the driver
    and no long-lived actor holds CPUs a small machine needs for the stages."""

    def __init__(self, layout: OutputLayout, keys: list[str], retry_failed: bool):
        results = _read_keys(layout.parquet_files("results"), keys)
        done = _table_hashes(results, keys) if results is not None else np.empty(0, np.uint64)
        if retry_failed:
            errors = _read_keys(layout.parquet_files("errors"), keys + ["attempt"])
            latest: dict[int, int] = {}
            if errors is not None:
                hashes = _table_hashes(errors, keys)
                keep = ~np.isin(hashes, done)
                for h, attempt in zip(hashes[keep].tolist(),
                                      np.asarray(errors.column("attempt"))[keep].tolist()):
                    latest[h] = max(int(attempt), latest.get(h, 0))
            self.keys = np.array(sorted(latest), dtype=np.uint64)
            self.attempts = np.array([latest[h] for h in self.keys.tolist()], dtype=np.int64)
        else:
            errors = _read_keys(layout.parquet_files("errors"), keys)
            if errors is not None:
                done = np.concatenate([done, _table_hashes(errors, keys)])
            self.keys = np.unique(done)
            self.attempts = None


_RESUME_CACHE: dict[str, _ResumeIndex] = {}


def _resume_filter_batch(batch: pd.DataFrame, layout: OutputLayout, keys: list[str],
                         retry_failed: bool, token: str) -> pd.DataFrame:
    index = _RESUME_CACHE.get(token)
    if index is None:
        _RESUME_CACHE.clear()  # one run at a time per worker process
        index = _RESUME_CACHE[token] = _ResumeIndex(layout, keys, retry_failed)
    batch = batch.reset_index(drop=True)
    if batch.empty:
        return batch
    hashes = _key_hashes([batch[k].tolist() for k in keys])
    pos = np.searchsorted(index.keys, hashes)
    found = np.zeros(len(hashes), dtype=bool)
    inside = pos < len(index.keys)
    found[inside] = index.keys[pos[inside]] == hashes[inside]
    if not retry_failed:
        return batch[~found]
    out = batch[found].copy()
    out[PREVIOUS_ATTEMPT] = index.attempts[pos[found]]
    return out


def _resume_filter(ds, layout: OutputLayout, keys: list[str], retry_failed: bool):
    token = uuid.uuid4().hex
    return ds.map_batches(_resume_filter_batch,
                          fn_kwargs={"layout": layout, "keys": keys,
                                     "retry_failed": retry_failed, "token": token},
                          batch_format="pandas", **LIGHT_TASK)


def _small_blocks(ds, rows: int):
    """Cap rows per block before the stages.

    A reader hands a whole CSV split (thousands of reports) to a stage as one block,
    and a stage's output block only reaches the writer when the block is done, so a
    kill would lose every row of it. Small blocks bound that loss to a few batches.
    The repartition is made a light task (Ray gives it no resource arguments of its
    own) so it fuses into the preceding light map instead of claiming a whole CPU."""
    ds = ds.repartition(target_num_rows_per_block=rows)
    op = getattr(getattr(ds, "_logical_plan", None), "dag", None)
    if op is not None and getattr(op, "ray_remote_args", None) == {}:
        object.__setattr__(op, "ray_remote_args", dict(LIGHT_TASK))
    return ds


def code_digest(stages: Sequence[Stage]) -> str:
    """Digest of the source of the modules that compute the stages' results (the stage
    class and, for LLM stages, the task class): an edited stage is a new experiment."""
    import inspect
    import sys

    digest = hashlib.sha256()
    names = sorted({type(obj).__module__ for s in stages
                    for obj in (s, getattr(s, "task", None)) if obj is not None})
    for name in names:
        try:
            digest.update(inspect.getsource(sys.modules[name]).encode("utf-8"))
        except (KeyError, OSError, TypeError):
            digest.update(name.encode("utf-8"))
    return digest.hexdigest()[:12]


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): json.dumps(value, sort_keys=True, default=str)}


def changed_fields(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """Dotted paths whose value differs between two fingerprints (the manifest keeps
    the previous one, secrets redacted)."""
    a, b = _flat(old or {}), _flat(scrub_secrets(new))
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _check_fingerprint(layout: OutputLayout, spec: RunSpec, digest: str,
                       has_rows: bool = True,
                       fingerprint: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The manifest is written before a run's first row (see ``_start``), so a killed
    run's configuration is known too. A folder without rows holds nothing to mix."""
    previous = layout.read_json()
    if previous and has_rows and previous.get("fingerprint_hash") not in (None, digest) \
            and not spec.allow_config_change:
        changed = changed_fields(previous.get("fingerprint"), fingerprint or {})
        shown = ", ".join(changed[:6]) + (f" and {len(changed) - 6} more" if len(changed) > 6 else "")
        raise ConfigChangedError(
            f"{layout.root} holds results of a different configuration "
            f"(fingerprint {previous.get('fingerprint_hash')} != {digest}; changed: "
            f"{shown or 'prompts, model, code or task options'}). Use a new output folder, "
            "or set run.allow_config_change to mix them."
        )
    return previous


#: ``after_run(output, manifest) -> fields``: see :func:`run_pipeline`
AfterRun = Callable[[str, dict[str, Any]], dict[str, Any]]


def run_pipeline(ds, stages: Sequence[Stage], spec: RunSpec,
                 extra_manifest: dict[str, Any] | None = None,
                 after_run: AfterRun | None = None) -> RunSummary:
    """Run ``stages`` over ``ds`` into ``spec.output`` (resume, errors table, manifest).

    ``extra_manifest``: the job's own manifest fields; ``after_run(output, manifest)``
    returns fields only known once the rows are written (an export, a cost estimate),
    merged into the final manifest, which is written once."""
    for stage in stages:
        stage.preflight()
    started = time.time()
    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    layout = OutputLayout(spec.output)
    fingerprint = {"job": spec.job, **spec.fingerprint,
                   "stages": [s.describe() for s in stages], "code": code_digest(stages)}
    digest = config_hash(fingerprint)
    keys = list(spec.key_columns)
    prior_ok = layout.row_count("results")
    prior_failed = layout.row_count("errors")
    previous = _check_fingerprint(layout, spec, digest, bool(prior_ok + prior_failed),
                                  fingerprint)

    if spec.retry_failed:
        # Rows are re-read from the source, not replayed from the errors table, so
        # input validation runs again (a fixed input file is picked up).
        if prior_failed == 0:
            log.info("ctray: no failed rows to retry in %s", layout.root)
            return _finish(layout, spec, run_id, started, fingerprint, digest, previous,
                           [], prior_ok, extra_manifest, after_run)
        ds = _resume_filter(ds, layout, keys, retry_failed=True)
    else:
        # Readers that checked their ids on the driver (local CSV/Parquet corpora) mark
        # the Dataset; others get the cluster-side groupby.
        if spec.check_duplicate_keys and getattr(ds, "_ctray_unique_keys", None) != tuple(keys):
            from ctray.io.corpus import find_duplicate_ids

            dups = find_duplicate_ids(ds, keys)
            if dups:
                shown = ", ".join(f"{[d[k] for k in keys]} ×{d['count()']}" for d in dups)
                raise DuplicateKeyError(f"duplicate row keys {keys} in the input: {shown}. "
                                        "Ids must be unique for resume to be correct.")
        if spec.resume and prior_ok + prior_failed:
            ds = _resume_filter(ds, layout, keys, retry_failed=False)
    ds = ds.map_batches(_tag_input, batch_format="pandas", **LIGHT_TASK)
    ds = _small_blocks(ds, spec.rows_per_block or spec.writer_batch_size)

    for stage in stages:
        ds = stage.apply(ds)
    types: dict[str, str] = {}
    for stage in stages:
        types.update(getattr(stage, "output_types", None) or {})
    counts = ds.map_batches(
        write_shard,
        fn_kwargs={"layout": layout, "key_columns": keys, "run_id": run_id, "types": types},
        batch_format="pandas", batch_size=spec.writer_batch_size, **LIGHT_TASK,
    )
    _start(layout, spec, run_id, started, fingerprint, digest, previous, extra_manifest)
    wants_gpus = any(getattr(getattr(s, "resources", None), "num_gpus", 0) for s in stages)
    # A stage that reuses work across consecutive rows (Resources.in_order: one scan
    # read for all of its findings) needs the blocks in input order too: Ray Data's
    # default lets a later block overtake an earlier one.
    if any(getattr(getattr(s, "resources", None), "in_order", False) for s in stages):
        counts.context.execution_options.preserve_order = True
    try:
        with pass_scheduling(counts.context, wants_gpus):
            summaries = counts.take_all()  # one small row per written shard
    except BaseException as exc:
        if isinstance(exc, Exception):  # Ctrl-C leaves the run "unfinished", like a kill
            _mark_failed(layout, run_id, exc)
        cause = _user_error_cause(exc)
        if cause is not None:
            raise cause from None
        raise
    return _finish(layout, spec, run_id, started, fingerprint, digest, previous, summaries,
                   prior_ok + (0 if spec.retry_failed else prior_failed), extra_manifest,
                   after_run)


def _user_error_cause(exc: BaseException) -> UserError | None:
    """A UserError raised inside a Ray task (e.g. a reader naming a bad file) reaches
    the driver wrapped in RayTaskError; unwrap it so the CLI prints one line."""
    for _ in range(10):
        if exc is None:
            return None
        cause = getattr(exc, "cause", None)
        if isinstance(cause, UserError):
            return cause
        if isinstance(exc, UserError) and cause is None:
            return exc
        exc = cause if isinstance(cause, BaseException) else exc.__cause__
    return None


def _run_entry(spec: RunSpec, run_id: str, started: float) -> dict[str, Any]:
    return {"run_id": run_id, "mode": "retry_failed" if spec.retry_failed else "run",
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started))}


def _start(layout, spec, run_id, started, fingerprint, digest, previous, extra_manifest) -> None:
    """Record the fingerprint and this run (as unfinished) before any row is written,
    so a rerun after a kill is checked against the configuration that wrote rows."""
    history = (previous or {}).get("runs", []) + [
        {**_run_entry(spec, run_id, started), "status": UNFINISHED}]
    layout.write_json({**_manifest_fields(layout, spec, fingerprint, digest, history),
                       **(extra_manifest or {})})


def _mark_failed(layout, run_id: str, exc: BaseException) -> None:
    try:
        manifest = layout.read_json() or {}
        for run in manifest.get("runs", []):
            if run.get("run_id") == run_id:
                # The type only: exception text may quote input rows.
                run.update(status=FAILED, error_type=type(exc).__name__)
        layout.write_json(manifest)
    except Exception:  # noqa: BLE001 - never hide the run's own error
        log.warning("ctray: could not record the failed run in %s", layout.manifest)


def _manifest_fields(layout, spec, fingerprint, digest, history) -> dict[str, Any]:
    totals = {c: sum(r.get("usage", {}).get(c, 0) for r in history) for c in USAGE_COLS}
    # The common keys (job, output, config, versions, ...) come from the one manifest helper.
    return job_manifest(
        spec.job, layout.root, spec.config, sum(r.get("wall_time_s", 0) for r in history),
        fingerprint=scrub_secrets(fingerprint),
        fingerprint_hash=digest,
        prompt_versions=sorted({s["prompt_version"] for s in fingerprint["stages"]
                                if s.get("prompt_version")}),
        models=[s["backend"] for s in fingerprint["stages"] if s.get("backend")],
        usage=totals,
        runs=history,
    )


def _finish(layout, spec, run_id, started, fingerprint, digest, previous, summaries,
            skipped, extra_manifest, after_run=None) -> RunSummary:
    ok = sum(int(s["ok"]) for s in summaries)
    failed = sum(int(s["failed"]) for s in summaries)
    usage = {c: sum(int(s.get(c, 0)) for s in summaries) for c in USAGE_COLS}
    failed_by_stage: dict[str, int] = {}
    for s in summaries:
        for stage, n in json.loads(s.get("failed_by_stage", "{}")).items():
            failed_by_stage[stage] = failed_by_stage.get(stage, 0) + int(n)
    wall = time.time() - started
    this_run = {
        **_run_entry(spec, run_id, started), "status": FINISHED,
        "wall_time_s": round(wall, 3), "ok": ok, "failed": failed,
        "failed_by_stage": failed_by_stage, "skipped": skipped, "usage": usage,
    }
    # `previous` is the manifest as it was before this run's start entry was written.
    history = (previous or {}).get("runs", []) + [this_run]
    manifest = {
        **_manifest_fields(layout, spec, fingerprint, digest, history),
        "counts": {"results_rows": layout.row_count("results"),
                   "error_rows": layout.row_count("errors"),
                   "this_run": {k: this_run[k] for k in ("ok", "failed", "skipped")}},
        **(extra_manifest or {}),
    }
    if after_run is not None:
        manifest.update(after_run(layout.root, manifest))
    layout.write_json(manifest)
    log.info("ctray %s: %d ok, %d failed, %d skipped in %.1fs -> %s",
             spec.job, ok, failed, skipped, wall, layout.root)
    return RunSummary(run_id, layout.root, ok, failed, skipped, wall, usage, manifest)
