"""``ctray eval-cxr``: any number of CXR labelers side by side against a gold table.

Inputs are label-cxr output folders (their ``results`` Parquet) or CSV/Parquet files in
the CheXpert layout (an id column and the 14 observation columns, 1.0/0.0/-1.0/empty;
a CheXpert or CheXbert output CSV works as is). Writes to ``run.output``:
``table1_weighted_f1.csv`` (all certainty levels), ``table2_weighted_f1_pos_neg.csv``,
``table3_pvalues.csv`` (paired t-test and Wilcoxon between every two labelers),
``class_f1.csv`` (positive / negative / uncertain extraction F1 per labeler),
``gold_support.csv``, ``figure2_f1_bars.png``, ``figure3_f1_abs_diff.png``,
``report.md`` and ``manifest.json``. The metric definitions are in ``evaluation``.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ctray.config import JobConfig
from ctray.errors import UserError
from ctray.tasks.cxr.schema import OBSERVATIONS, observation_for, to_class


def _sample(name: str) -> str:
    return str(resources.files("ctray") / "data" / name)


class LabelsInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="label-cxr output folder, or a CSV/Parquet file")
    label: str | None = Field(
        None, description="name in the tables and figures (default: the folder/file name)")
    id_column: str | None = Field(
        None, description="id column (default: report_id, uid or Reports, whichever exists)")


class CxrEvalConfig(JobConfig):
    job: str = "eval-cxr"
    gold: LabelsInput = Field(default_factory=lambda: LabelsInput(
        path=_sample("sample_cxr_labels.csv"), label="gold"), description="the gold label table")
    labelers: list[LabelsInput] = Field(
        default_factory=list, min_length=0, description="the labelers' outputs to score (folders "
        "or files)")
    title: str = Field("CXR labelers vs gold", description="title of the figures and the report")
    allow_partial: bool = Field(False, description="score labelers that cover only part of the "
                                "gold reports (on the covered part; coverage is printed next to "
                                "every figure) instead of stopping")

    @field_validator("labelers", mode="before")
    @classmethod
    def _paths(cls, value):
        # `--set labelers=[runs/a, runs/b]` may give bare paths.
        if isinstance(value, list):
            return [{"path": v} if isinstance(v, str) else v for v in value]
        return value


_ID_CANDIDATES = ("report_id", "uid", "Reports", "study_id", "id")


def read_labels(inp: LabelsInput, kind: str) -> pd.DataFrame:
    """Index: report id (str); columns: the 14 observations as 1.0/0.0/-1.0/NaN."""
    from ctray.io.output import read_output_table

    if "://" not in inp.path and not Path(inp.path).exists():
        raise UserError(f"{inp.path}: no such file or folder ({kind})")
    id_names = tuple(c for c in (inp.id_column, *_ID_CANDIDATES) if c)
    table = read_output_table(inp.path, f"{kind} (label-cxr output folder)",
                              text_columns=id_names)
    table = table.rename(columns={c: observation_for(c) for c in table.columns
                                  if observation_for(c) is not None})
    id_col = inp.id_column or next((c for c in _ID_CANDIDATES if c in table.columns), None)
    if id_col is None or id_col not in table.columns:
        raise UserError(f"{inp.path}: no id column (looked for {inp.id_column or _ID_CANDIDATES}); "
                        "set id_column")
    missing = [o for o in OBSERVATIONS if o not in table.columns]
    if missing:
        raise UserError(f"{inp.path}: missing observation column(s) {missing}")
    ids = table[id_col].astype(str).str.strip()
    if ids.duplicated().any():
        raise UserError(f"{inp.path}: duplicate ids in {id_col!r}, e.g. "
                        f"{ids[ids.duplicated()].iloc[0]!r}")
    out = pd.DataFrame(index=pd.Index(ids, name="report_id"))
    for obs in OBSERVATIONS:
        try:
            out[obs] = [to_class(v) for v in table[obs].tolist()]
        except ValueError as exc:
            raise UserError(f"{inp.path}: column {obs!r}: {exc}") from None
    return out


def _names(inputs: list[LabelsInput]) -> list[str]:
    names = [i.label or Path(i.path.rstrip("/")).stem for i in inputs]
    if len(set(names)) != len(names):
        names = [f"{n}_{k + 1}" for k, n in enumerate(names)]
    return names


def _markdown(df: pd.DataFrame, digits: int = 4) -> str:
    return df.to_markdown(floatfmt=f".{digits}f") if hasattr(df, "to_markdown") else df.to_string()


def run_cxr_eval(cfg: CxrEvalConfig) -> dict[str, Any]:
    from ctray.io.manifest import write_job_manifest
    from ctray.tasks.cxr import evaluation as ev

    started = time.time()
    if not cfg.labelers:
        raise UserError("eval-cxr needs at least one labeler: --set 'labelers=[runs/label_cxr]' "
                        "or a labelers: list in the config")
    gold = read_labels(cfg.gold, "gold labels")
    names = _names(cfg.labelers)
    preds = {n: read_labels(i, "predictions") for n, i in zip(names, cfg.labelers)}
    ids = gold.index
    for p in preds.values():
        ids = ids.intersection(p.index)
    if len(ids) == 0:
        raise UserError(f"no report id is in the gold labels ({cfg.gold.path}) and every "
                        "labeler's output; check the id columns")
    coverage = {n: int(len(gold.index.intersection(p.index))) for n, p in preds.items()}
    short = {n: c for n, c in coverage.items() if c < len(gold)}
    if short and not cfg.allow_partial:
        shown = ", ".join(f"{n} has {c} of {len(gold)}" for n, c in short.items())
        raise UserError(f"labelers do not cover the gold reports ({cfg.gold.path}): {shown}. "
                        "Scores on a part are not comparable; label the missing reports (or "
                        "fix the id columns), or pass --allow-partial to score the covered part")
    ids = pd.Index(sorted(ids), name="report_id")
    g = gold.loc[ids]
    aligned = {n: p.loc[ids] for n, p in preds.items()}

    out = Path(cfg.run.output)
    out.mkdir(parents=True, exist_ok=True)
    table1 = ev.f1_table(g, aligned, ev.ALL_LEVELS)
    table2 = ev.f1_table(g, aligned, ev.POS_NEG)
    tests = ev.paired_tests(table1)
    tests2 = ev.paired_tests(table2)
    diffs = ev.abs_differences(table1)
    class_rows = []
    for name, p in aligned.items():
        for obs in OBSERVATIONS:
            scores = ev.class_f1(g[obs], p[obs])
            class_rows.append({"labeler": name, "observation": obs, "positive_f1": scores[1],
                               "negative_f1": scores[0], "uncertain_f1": scores[-1]})
    class_f1 = pd.DataFrame(class_rows)
    support = ev.support(g)
    files = {
        "table1": out / "table1_weighted_f1.csv", "table2": out / "table2_weighted_f1_pos_neg.csv",
        "table3": out / "table3_pvalues.csv", "table3_pos_neg": out / "table3_pvalues_pos_neg.csv",
        "class_f1": out / "class_f1.csv", "support": out / "gold_support.csv",
        "abs_diff": out / "f1_abs_differences.csv",
    }
    table1.to_csv(files["table1"], index_label="observation")
    table2.to_csv(files["table2"], index_label="observation")
    tests.to_csv(files["table3"], index=False)
    tests2.to_csv(files["table3_pos_neg"], index=False)
    class_f1.to_csv(files["class_f1"], index=False)
    support.to_csv(files["support"], index_label="observation")
    diffs.to_csv(files["abs_diff"], index_label="observation")
    files["figure2"] = ev.plot_grouped_bars(table1, out / "figure2_f1_bars.png",
                                            f"{cfg.title}: weighted F1 (positive, negative, uncertain)")
    if diffs.shape[1]:
        files["figure3"] = ev.plot_difference_heatmap(diffs, out / "figure3_f1_abs_diff.png",
                                                      f"{cfg.title}: |F1 difference|")
    undefined = [o for o in OBSERVATIONS if table1[names[0]].isna()[o]]
    report = [
        f"# {cfg.title}", "",
        f"{len(ids)} reports in the gold labels and every labeler's output "
        f"(gold: {len(gold)}; " + ", ".join(f"{n}: {len(p)}" for n, p in preds.items()) + "); "
        f"coverage {len(ids)}/{len(gold)} gold reports"
        + (" (PARTIAL, scored with allow_partial)" if len(ids) < len(gold) else "") + ".",
        "Weighted F1 = support-weighted mean of the positive / negative / uncertain extraction F1 "
        "(blank is never scored but counts as 'other'); see ctray/tasks/cxr/evaluation.py.",
        (f"No gold support (F1 undefined, left out of the average): {undefined}." if undefined else ""),
        "", "## Table 1: weighted F1, all certainty levels", "", _markdown(table1), "",
        "## Table 2: weighted F1, positive and negative only", "", _markdown(table2), "",
        "## Table 3: paired tests over observations (Table 1 F1)", "",
        _markdown(tests.set_index("comparison")) if len(tests) else "(one labeler: no test)", "",
        "## Gold support", "", _markdown(support, 0), "",
    ]
    files["report"] = out / "report.md"
    files["report"].write_text("\n".join(report), encoding="utf-8")
    summary = {
        "job": cfg.job, "output": str(out), "labelers": names, "reports": len(ids),
        "gold_reports": len(gold),
        "labeler_reports": {n: len(p) for n, p in preds.items()},
        "gold_without_prediction": {n: int(len(gold.index.difference(p.index)))
                                    for n, p in preds.items()},
        "coverage": {"scored": len(ids), "gold": len(gold), "per_labeler": coverage,
                     "partial": len(ids) < len(gold)},
        "mean_weighted_f1": {n: float(table1.loc["Average", n]) for n in names},
        "mean_weighted_f1_pos_neg": {n: float(table2.loc["Average", n]) for n in names},
        "undefined_observations": undefined,
        "tests": tests.to_dict("records"),
        "files": {k: str(v) for k, v in files.items()},
    }
    write_job_manifest(cfg, started, **summary)
    cov = f"(coverage {len(ids)}/{len(gold)} gold reports)"
    print(f"[ctray eval-cxr] {len(ids)} reports; mean weighted F1 "
          + ", ".join(f"{n} {v:.4f} {cov}" for n, v in summary["mean_weighted_f1"].items())
          + f"; report {files['report']}")
    return summary
