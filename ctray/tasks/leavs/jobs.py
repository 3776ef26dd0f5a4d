"""Registers ``leavs`` and ``leavs-eval`` (imported by ctray.jobs.load_job_modules)."""

from __future__ import annotations

from pathlib import Path

from ctray.config import JobConfig
from ctray.jobs import JobSpec, register


class LeavsEvalConfig(JobConfig):
    job: str = "leavs-eval"
    # A LEAVS output CSV, or a `ctray leavs` output folder (its CSV is used).
    predictions: str = "runs/leavs"
    annotations: str = "../shared/data/leavs/amos_test_annotations.csv"
    out: str = "runs/leavs_eval"
    n_bootstrap: int = 2000
    seed: int = 0


def run_leavs_eval(cfg: LeavsEvalConfig) -> dict:
    from ctray.errors import UserError
    from ctray.tasks.leavs.assemble import CSV_NAME
    from ctray.tasks.leavs.evaluation import evaluate_leavs

    predictions = Path(cfg.predictions)
    if predictions.is_dir():
        predictions = predictions / CSV_NAME
    for label, path in (("predictions", predictions), ("annotations", Path(cfg.annotations))):
        if not path.is_file():
            raise UserError(f"leavs-eval: {label} file {path} does not exist")
    results = evaluate_leavs(predictions, cfg.annotations, cfg.out,
                             n_bootstrap=cfg.n_bootstrap, seed=cfg.seed)
    t1, t2 = results["table1_micro"], results["table2_micro"]
    print(f"[ctray leavs-eval] {results['n_reports']} reports: finding types micro F1 "
          f"{t1['f1']:.3f}; any abnormality micro F1 {t2['f1']:.3f}; urgency macro tau-b "
          f"{results['table4_macro']['tau_b']:.3f}; tables in {cfg.out}/tables.md")
    return results


register(JobSpec(
    "leavs",
    "LEAVS organ x finding-type certainty and urgency labels for abdominal CT reports "
    "(one Ray Data pass per question stage)",
    "ctray.tasks.leavs.pipeline:LeavsConfig",
    "ctray.tasks.leavs.pipeline:run_leavs",
    flags={"--fast": "fast", "--no-cot": "no_cot", "--unselected-types": "unselected_types"},
))
register(JobSpec(
    "leavs-eval",
    "score LEAVS labels against the AMOS-MM human annotations (paper Tables 1, 2, 4, 5)",
    "ctray.tasks.leavs.jobs:LeavsEvalConfig",
    "ctray.tasks.leavs.jobs:run_leavs_eval",
    flags={"--predictions": "predictions", "--annotations": "annotations", "--out": "out"},
    needs_ray=False,
))
