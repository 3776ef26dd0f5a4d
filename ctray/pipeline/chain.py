"""Multi-pass jobs as a chain of runs: one helper for every pass of every such job.

A job that fans out (LEAVS per organ / sentence / type, ground-text per pass,
translate's back-translation) runs each pass as its own ``run_pipeline`` call with its
own output folder; the next pass reads the previous pass's Parquet results. This
module owns what that needs beyond a single run, so every chained job gets it alike:

- **resume** and the errors table per pass (the runner's, through ``run_spec``);
- **retry-failed across passes**: a retry replays this pass's own failures, then a
  normal resuming run picks up rows that became ready because an upstream pass's
  retry has just succeeded (they have no failure here to replay);
- **the input-signature shortcut**: a digest of the upstream result file names (named
  by a digest of the keys they hold), the pass's fingerprint and its stages. When a
  pass last finished over exactly these inputs, a rerun skips it without any Ray
  execution (a resumed run would read everything only to find nothing to do).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from ctray.io.manifest import config_hash
from ctray.io.output import USAGE_COLS, OutputLayout
from ctray.pipeline.job import job_fingerprint, print_summary, run_spec
from ctray.pipeline.runner import AfterRun, RunSummary, run_pipeline
from ctray.pipeline.stage import Stage

SIGNATURE_KEY = "input_signature"


def input_signature(upstream: Sequence[str], fingerprint: dict[str, Any],
                    stages: Sequence[Stage], extra: dict[str, Any] | None = None) -> str:
    """Digest of everything a pass's input rows are derived from (see the module doc)."""
    files = {folder.rstrip("/").rsplit("/", 1)[-1]:
             [f.rsplit("/", 1)[-1] for f in OutputLayout(folder).parquet_files("results")]
             for folder in upstream}
    return config_hash({"files": files, "fingerprint": fingerprint,
                        "stages": [s.describe() for s in stages], **(extra or {})})


def _unchanged(cfg, where: str, output: str, signature: str) -> RunSummary | None:
    layout = OutputLayout(output)
    previous = layout.read_json()
    if (not cfg.run.resume or cfg.run.retry_failed or not previous
            or previous.get(SIGNATURE_KEY) != signature):
        return None
    done = layout.row_count("results") + layout.row_count("errors")
    print(f"{where}inputs unchanged since its last complete run; "
          f"{done} rows already done")
    return RunSummary("unchanged", layout.root, 0, 0, done, 0.0,
                      {c: 0 for c in USAGE_COLS}, previous)


def run_pass(cfg, name: str, stages: Sequence[Stage], make_ds: Callable[[], Any], *,
             output: str, key_columns: Sequence[str] = ("report_id",),
             fingerprint: dict[str, Any] | None = None,
             extra_manifest: dict[str, Any] | None = None,
             upstream: Sequence[str] = (), signature_extra: dict[str, Any] | None = None,
             check_duplicate_keys: bool = True, resume_after_retry: bool | None = None,
             after_run: AfterRun | None = None) -> RunSummary | None:
    """Run one pass of a chained job; returns its summary, or None when it had no input.

    ``make_ds`` builds the pass's input Dataset (None: the upstream pass has no results
    yet); it is called once per run, so a retry's follow-up run sees fresh upstream
    results. ``upstream``: the output folders the input rows are made from (empty for a
    pass reading the corpus): they enable the input-signature shortcut and, by default,
    the resuming run after a retry. ``check_duplicate_keys=False`` for passes whose keys
    are unique by construction (fanned out from unique keys): the check costs a full
    extra execution with a shuffle. ``after_run(output, manifest)`` adds fields known
    only after each run (e.g. a cost estimate) to that run's manifest."""
    job = cfg.job or type(cfg).__name__
    where = f"[ctray {job}] {name}: "
    fingerprint = fingerprint or {}
    extra = dict(extra_manifest or {})
    if upstream:
        # The whole fingerprint (config included): a changed setting is not "unchanged".
        signature = input_signature(upstream, job_fingerprint(cfg, fingerprint), stages,
                                    signature_extra)
        same = _unchanged(cfg, where, output, signature)
        if same is not None:
            return same
        extra[SIGNATURE_KEY] = signature
    runs = [cfg]
    if cfg.run.retry_failed and (bool(upstream) if resume_after_retry is None else resume_after_retry):
        runs.append(cfg.model_copy(update={"run": cfg.run.model_copy(update={"retry_failed": False})}))
    summary = None
    for run_cfg in runs:
        ds = make_ds()
        if ds is None:
            print(f"{where}nothing to do (the previous pass has no results yet)")
            return summary
        spec = run_spec(run_cfg, key_columns, fingerprint, output)
        spec.check_duplicate_keys = check_duplicate_keys
        summary = run_pipeline(ds, stages, spec, extra, after_run)
        print_summary(job, summary, name)
    return summary


def pass_record(output: str, summary: RunSummary | None) -> dict[str, Any]:
    """One pass's entry in the job's top manifest (read back from the pass's folder)."""
    layout = OutputLayout(output)
    m = (summary.manifest if summary is not None else layout.read_json()) or {}
    return {"output": layout.root, "results_rows": layout.row_count("results"),
            "error_rows": layout.row_count("errors"),
            "this_run": ({"ok": summary.ok, "failed": summary.failed, "skipped": summary.skipped}
                         if summary is not None else None),
            "fingerprint_hash": m.get("fingerprint_hash"),
            "prompt_versions": m.get("prompt_versions", []), "models": m.get("models", []),
            "usage": m.get("usage"), "this_run_usage": summary.usage if summary else None,
            "wall_time_s": m.get("wall_time_s")}


def write_chain_manifest(cfg, started: float, out: str,
                         passes: dict[str, RunSummary | None], **fields: Any) -> dict[str, Any]:
    """``<out>/manifest.json`` of a chained job: the common manifest keys, one record per
    pass (``passes`` maps a pass name to its summary; the folder is ``<out>/<name>``),
    usage summed over the passes (all runs, and this run), then the job's ``fields``."""
    from ctray.io.manifest import write_job_manifest

    records = {name: pass_record(f"{out}/{name}", s) for name, s in passes.items()}
    usage = {c: sum(int((r["usage"] or {}).get(c, 0)) for r in records.values())
             for c in USAGE_COLS}
    this_run = {c: sum(int((r["this_run_usage"] or {}).get(c, 0)) for r in records.values())
                for c in USAGE_COLS}
    return write_job_manifest(cfg, started, **{
        "output": out, "passes": records, "usage": usage, "this_run_usage": this_run,
        "note": "each pass folder has its own manifest.json (fingerprint, prompts, models, runs)",
        **fields})
