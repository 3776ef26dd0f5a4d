"""The ``eval-leavs`` job: LEAVS labels scored against the AMOS-MM annotations."""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import Field

from ctray.config import JobConfig, RunConfig


class LeavsEvalConfig(JobConfig):
    job: str = "eval-leavs"
    run: RunConfig = Field(
        default_factory=lambda: RunConfig(output="runs/leavs_eval"), description="output folder "
        "and logging")
    predictions: str = Field("runs/leavs", description="a LEAVS output CSV (release layout), "
                             "or a `ctray label-leavs` output folder (its CSV is used)")
    annotations: str = Field("../shared/data/leavs/amos_test_annotations.csv",
                             description="the AMOS-MM human annotations CSV")
    n_bootstrap: int = Field(2000, description="bootstrap resamples for the confidence intervals")
    seed: int = Field(0, description="seed of the bootstrap")


def run_leavs_eval(cfg: LeavsEvalConfig) -> dict:
    from ctray.errors import UserError
    from ctray.io.manifest import write_job_manifest
    from ctray.tasks.leavs.assemble import CSV_NAME
    from ctray.tasks.leavs.evaluation import evaluate_leavs

    predictions = Path(cfg.predictions)
    if predictions.is_dir():
        predictions = predictions / CSV_NAME
    for label, path in (("predictions", predictions), ("annotations", Path(cfg.annotations))):
        if not path.is_file():
            raise UserError(f"eval-leavs: {label} file {path} does not exist")
    started = time.time()
    out = cfg.run.output
    results = evaluate_leavs(predictions, cfg.annotations, out,
                             n_bootstrap=cfg.n_bootstrap, seed=cfg.seed)
    write_job_manifest(cfg, started, predictions=str(predictions), **results)
    t1, t2 = results["table1_micro"], results["table2_micro"]
    print(f"[ctray eval-leavs] {results['n_reports']} reports: finding types micro F1 "
          f"{t1['f1']:.3f}; any abnormality micro F1 {t2['f1']:.3f}; urgency macro tau-b "
          f"{results['table4_macro']['tau_b']:.3f}; tables in {out}/tables.md")
    return results
