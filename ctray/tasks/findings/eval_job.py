"""The ``eval-findings`` job: findings predictions against gold labels.

``eval-findings`` joins a label-findings output (or any CSV/Parquet with the 18
finding columns) with gold labels in CT-RATE's multi-abnormality layout and writes
the per-finding table (accuracy, precision, recall, F1, AUC-ROC; macro and micro),
optionally per-finding thresholds searched on a seeded validation part of the gold
set and applied to the rest, and, given a second input, the "A minus B" delta table
and an F1 bar chart (CT-BERT-JPN's refined-minus-machine-translated comparison).
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from ctray.config import JobConfig, sample_path
from ctray.errors import UserError

log = logging.getLogger(__name__)


class PredictionsInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="label-findings output folder, or a CSV/Parquet file")
    label: str | None = Field(None, description="name in tables and the chart (default: the "
                              "folder name)")
    id_column: str = Field("report_id", description="the report id column")


class GoldInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(
        default_factory=lambda: sample_path("sample_labels.csv"), description="gold labels CSV "
        "(CT-RATE multi-abnormality layout)")
    id_column: str = Field("VolumeName", description="the id column of the gold labels")
    id_pattern: str | None = Field(None, description="Regex whose first group is the report id, "
                                   "for label files keyed by volume: CT-RATE's "
                                   '"valid_1_a_1.nii.gz" -> "valid_1_a" with '
                                   '^(.+?_\\d+_[a-z]+)(?:_\\d+)?(?:\\.nii(?:\\.gz)?)?$')


class FindingsEvalConfig(JobConfig):
    job: str = "eval-findings"
    predictions: PredictionsInput = Field(description="the labels to score")
    compare_to: PredictionsInput | None = Field(
        None, description="a second set of labels: adds the A-minus-B delta table and the F1 "
        "chart")
    gold: GoldInput = Field(default_factory=GoldInput, description="the gold labels")
    threshold_search: bool = Field(False, description="search per-finding thresholds on a "
                                   "validation part of the gold set (inputs with prob_ columns)")
    threshold_metric: Literal["f1", "youden", "accuracy"] = Field(
        "f1", description="what the threshold search maximises")
    validation_fraction: float = Field(0.5, gt=0, lt=1, description="share of reports used for the threshold "
                                       "search")
    seed: int = Field(42, description="seed of the validation split")
    title: str = Field("Findings classification", description="title of report.md")
    allow_partial: bool = Field(False, description="score predictions that cover only part of "
                                "the gold reports (on the covered part; coverage is printed next "
                                "to every figure) instead of stopping")


# ----------------------------------------------------------------------------- reading

def _read_table(path: str, columns: list[str] | None = None,
                id_column: str | None = None) -> pd.DataFrame:
    from ctray.io.output import read_output_table

    return read_output_table(path, "label-findings output folder", columns,
                             text_columns=(id_column,) if id_column else ())


def read_predictions(inp: PredictionsInput) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(0/1 predictions, probabilities or None), indexed by report id, snake_case columns."""
    from ctray.tasks.findings.stages import PROB_PREFIX
    from ctray.tasks.findings.schema import FINDING_COLUMNS, to_columns

    wanted = [inp.id_column, *FINDING_COLUMNS, *(PROB_PREFIX + c for c in FINDING_COLUMNS)]
    df = to_columns(_read_table(inp.path, wanted, inp.id_column))
    missing = [c for c in [inp.id_column, *FINDING_COLUMNS] if c not in df.columns]
    if missing:
        raise UserError(f"{inp.path}: missing prediction column(s) {missing}")
    df[inp.id_column] = df[inp.id_column].astype(str)
    if df[inp.id_column].duplicated().any():
        raise UserError(f"{inp.path}: duplicate ids in {inp.id_column!r}")
    df = df.set_index(inp.id_column)
    probs_cols = [PROB_PREFIX + c for c in FINDING_COLUMNS]
    probs = None
    if all(c in df.columns for c in probs_cols):
        probs = df[probs_cols].rename(columns=lambda c: c[len(PROB_PREFIX):]).astype(float)
    return df[list(FINDING_COLUMNS)].astype(int), probs


def read_gold(gold: GoldInput) -> tuple[pd.DataFrame, int]:
    from ctray.tasks.findings.schema import FINDING_COLUMNS, to_columns

    df = to_columns(_read_table(gold.path, id_column=gold.id_column))
    missing = [c for c in [gold.id_column, *FINDING_COLUMNS] if c not in df.columns]
    if missing:
        raise UserError(f"{gold.path}: missing gold column(s) {missing}")
    ids = df[gold.id_column].astype(str)
    if gold.id_pattern:
        pattern = re.compile(gold.id_pattern)
        ids = ids.map(lambda s: (m.group(1) if (m := pattern.match(s)) else s))
    df = df.assign(**{gold.id_column: ids})
    # Several volumes (reconstructions) of one report: their labels are the report's.
    duplicates = int(df[gold.id_column].duplicated().sum())
    df = df.drop_duplicates(gold.id_column).set_index(gold.id_column)
    return df[list(FINDING_COLUMNS)].astype(int), duplicates


# ----------------------------------------------------------------------------- run

def _label(inp: PredictionsInput) -> str:
    return inp.label or Path(inp.path.rstrip("/")).name


def _split_ids(ids: pd.Index, fraction: float, seed: int) -> tuple[pd.Index, pd.Index]:
    from sklearn.model_selection import train_test_split

    val, test = train_test_split(sorted(ids), train_size=fraction, random_state=seed)
    return pd.Index(val), pd.Index(test)


def _evaluate(pred, probs, gold, val, test, cfg, label: str, tables: dict) -> pd.DataFrame:
    """Metrics on ``test``; with threshold search, thresholds come from ``val`` (only
    for inputs with probabilities; the others are scored on the same ``test`` reports
    so a comparison stays like for like)."""
    from ctray.tasks.findings.evaluation import apply_thresholds, evaluate_findings, search_thresholds

    score = None if probs is None else probs.loc[test]
    if cfg.threshold_search and probs is not None:
        thr = search_thresholds(gold.loc[val], probs.loc[val], metric=cfg.threshold_metric)
        tables[f"metrics_{label}_at_0.5"] = evaluate_findings(gold.loc[test], pred.loc[test], score)
        tables[f"thresholds_{label}"] = thr.to_frame()
        pred = apply_thresholds(probs, thr)
    table = evaluate_findings(gold.loc[test], pred.loc[test], score)
    tables[f"metrics_{label}"] = table
    return table


def run_findings_eval(cfg: FindingsEvalConfig) -> dict[str, Any]:
    from ctray.io.manifest import write_job_manifest
    from ctray.tasks.findings.evaluation import compare, format_delta, plot_f1_bars, write_report

    started = time.time()
    out = Path(cfg.run.output)
    gold, gold_duplicates = read_gold(cfg.gold)
    inputs = [cfg.predictions] + ([cfg.compare_to] if cfg.compare_to else [])
    labels = [_label(i) for i in inputs]
    if len(set(labels)) != len(labels):
        labels = [f"{lab}_{k + 1}" for k, lab in enumerate(labels)]
    loaded = [read_predictions(i) for i in inputs]
    ids = gold.index
    for pred, _ in loaded:
        ids = ids.intersection(pred.index)
    if len(ids) == 0:
        raise UserError("no report id is in both the predictions and the gold labels "
                        f"({cfg.gold.path}, id column {cfg.gold.id_column!r}); set gold.id_pattern?")
    covered = [int(len(gold.index.intersection(p.index))) for p, _ in loaded]
    short = [(lab, c) for lab, c in zip(labels, covered) if c < len(gold)]
    if short and not cfg.allow_partial:
        shown = ", ".join(f"{lab} has {c} of {len(gold)}" for lab, c in short)
        raise UserError(f"predictions do not cover the gold reports ({cfg.gold.path}): {shown}. "
                        "Scores on a part are not comparable; label the missing reports (or "
                        "set gold.id_pattern), or pass --allow-partial to score the covered part")
    ids = pd.Index(sorted(ids))
    tables: dict[str, pd.DataFrame] = {}
    split_info: dict[str, Any] = {}
    val, test = pd.Index([]), ids
    if cfg.threshold_search:
        if all(pr is None for _, pr in loaded):
            log.warning("no input has prob_ columns: threshold search skipped")
        else:
            val, test = _split_ids(ids, cfg.validation_fraction, cfg.seed)
            split_info = {"validation_reports": len(val), "test_reports": len(test),
                          "seed": cfg.seed}
    results = [_evaluate(p, pr, gold, val, test, cfg, lab, tables)
               for (p, pr), lab in zip(loaded, labels)]
    written = {}
    if len(results) == 2:
        tables[f"delta_{labels[0]}_minus_{labels[1]}"] = format_delta(compare(results[0], results[1]))
        out.mkdir(parents=True, exist_ok=True)
        written["f1_bars"] = str(plot_f1_bars(results[0], results[1], labels, out / "f1_bars.png"))
    title = f"{cfg.title} (coverage {len(ids)}/{len(gold)} gold reports" + (
        ", PARTIAL: scored with allow_partial)" if len(ids) < len(gold) else ")")
    written.update({k: str(v) for k, v in write_report(tables, out, title).items()})
    summary = {
        "job": cfg.job, "output": str(out), "labels": labels,
        "reports_joined": len(ids), "reports_evaluated": len(test), "gold_reports": len(gold),
        "gold_duplicate_ids": gold_duplicates,
        "predictions_without_gold": [int(len(p.index.difference(gold.index))) for p, _ in loaded],
        "gold_without_predictions": [int(len(gold.index.difference(p.index))) for p, _ in loaded],
        "coverage": {"scored": len(ids), "gold": len(gold), "per_input": dict(zip(labels, covered)),
                     "partial": len(ids) < len(gold)},
        "macro_f1": {lab: float(r.loc["macro", "f1"]) for lab, r in zip(labels, results)},
        "macro_auc": {lab: float(r.loc["macro", "auc_roc"]) for lab, r in zip(labels, results)},
        "threshold_split": split_info, "files": written,
    }
    write_job_manifest(cfg, started, **summary)
    cov = f"(coverage {len(ids)}/{len(gold)} gold reports)"
    print(f"[ctray eval-findings] {len(ids)} reports; macro F1 "
          + ", ".join(f"{k} {v:.3f} {cov}" for k, v in summary["macro_f1"].items())
          + f"; report {out / 'report.md'}")
    return summary
