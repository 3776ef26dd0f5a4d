"""``ctray eval-grounding``: ReXGroundingCT's Table 4 and Figure 2 from predicted masks.

Inputs: one or more prediction sets (a ``segment`` output folder, or a CSV/Parquet
with ``finding_id`` and ``mask_uri``) and the ground truth (a manifest with
``finding_id``, ``mask_uri`` and ``category``; ``phantoms.write_phantom_set``'s
``manifest.csv`` is one). Per finding: Dice of the predicted against the GT mask on
the scan grid, and size = GT voxels / scan voxels. The paper counts both after
isotropic resampling; resampling scales both counts by the same factor, so the
ratio on the stored grid is the same up to interpolation at the mask border.

A finding with no usable prediction (segment failed on it, mask file missing or on
another grid) scores Dice 0 by default (``missing: zero``), as a method that
returns nothing would; ``missing: drop`` leaves it out. Either way it is counted.

Writes to ``run.output``: ``per_finding.csv``, ``table4.csv`` (numbers and CI
bounds), ``table4.md`` (paper-style cells, plus the size-group, focality and
category tables), ``by_size.csv``, ``by_focality.csv``, ``by_category.csv``,
``per_category.png`` and ``manifest.json``. No Ray: the work is reading masks,
done on a thread pool (gzip inflation releases the GIL).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ctray.config import JobConfig
from ctray.errors import UserError

log = logging.getLogger(__name__)


class PredictionSet(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="segment output folder, or a CSV/Parquet file")
    label: str | None = Field(
        None, description="row name in the tables (default: the folder/file name)")
    id_column: str = Field("finding_id", description="column holding the finding id")
    mask_column: str = Field("mask_uri", description="column holding the predicted mask URI")


class GroundTruth(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="CSV/Parquet manifest: finding id, GT mask, category")
    id_column: str = Field("finding_id", description="column holding the finding id")
    mask_column: str = Field("mask_uri", description="column holding the ground-truth mask URI")
    category_column: str = Field("category", description="column holding the finding category")


class GroundEvalConfig(JobConfig):
    job: str = "eval-grounding"
    predictions: list[PredictionSet] = Field(description="the prediction sets to score")
    ground_truth: GroundTruth = Field(description="the ground-truth manifest")
    missing: Literal["zero", "drop"] = Field(
        "zero", description="a finding without prediction: zero (scores 0) or drop (ignored)")
    # A voxel is foreground when its value is >= mask_threshold, in predictions and GT
    # alike: 0/1 and 0/255 masks read as they are, a soft probability map is cut here
    # instead of every non-zero voxel counting as foreground.
    mask_threshold: float = Field(default=0.5, gt=0,
                                  description="foreground = voxel value >= this")
    n_bootstrap: int = Field(1000, description="bootstrap resamples for the confidence intervals")
    seed: int = Field(0, description="bootstrap seed")
    read_threads: int = Field(4, description="threads reading masks")
    title: str = Field(
        "Text-prompted 3D grounding (ReXGroundingCT Table 4)", description="title of the tables "
        "and figures")

    @field_validator("predictions", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        # `--predictions runs/segment` gives one path; a config may list several methods.
        if isinstance(value, (str, dict)):
            value = [value]
        return [{"path": v} if isinstance(v, str) else v for v in value]


# ----------------------------------------------------------------------------- reading

def read_table(path: str) -> pd.DataFrame:
    """A run folder's ``results`` Parquet files, or one CSV/Parquet file."""
    from ctray.io.output import read_output_table

    return read_output_table(path, "segment output folder (no results/)", allow_empty=True)


def _label(p: PredictionSet) -> str:
    if p.label:
        return p.label
    name = Path(p.path.rstrip("/")).name
    return name.rsplit(".", 1)[0] if name.endswith((".csv", ".parquet")) else name


def read_ground_truth(gt: GroundTruth) -> pd.DataFrame:
    df = read_table(gt.path)
    missing = [c for c in (gt.id_column, gt.mask_column, gt.category_column) if c not in df]
    if missing:
        raise UserError(f"{gt.path}: missing ground-truth column(s) {missing}")
    df = df.rename(columns={gt.id_column: "finding_id", gt.mask_column: "gt_mask_uri",
                            gt.category_column: "category"})
    df["finding_id"] = df["finding_id"].astype(str)
    if df["finding_id"].duplicated().any():
        raise UserError(f"{gt.path}: duplicate finding ids")
    keep = ["finding_id", "gt_mask_uri", "category", *[c for c in ("kind", "volume_id")
                                                       if c in df.columns]]
    return df[keep]


def read_predictions(p: PredictionSet) -> pd.DataFrame:
    df = read_table(p.path)
    if df.empty:
        return pd.DataFrame(columns=["finding_id", "pred_mask_uri"])
    missing = [c for c in (p.id_column, p.mask_column) if c not in df]
    if missing:
        raise UserError(f"{p.path}: missing prediction column(s) {missing}")
    df = df.rename(columns={p.id_column: "finding_id", p.mask_column: "pred_mask_uri"})
    df["finding_id"] = df["finding_id"].astype(str)
    # A resumed or retried segment run may hold a finding twice: keep the latest row.
    df = df.drop_duplicates("finding_id", keep="last")
    return df[["finding_id", "pred_mask_uri"]]


# ----------------------------------------------------------------------------- scoring

def category_focality(category: Any) -> str | None:
    """``"non-focal"`` (1x), ``"focal"`` (2x) or None (other categories) by the
    ReXGroundingCT schema (see ``ctray.metrics.segmentation`` on the reading)."""
    from ctray.tasks.grounding.categories import load_categories

    schema = load_categories()
    code = schema.normalize(str(category)) or schema.normalize(str(category).split(")")[0])
    if code is None:
        raise UserError(f"unknown finding category {category!r}")
    return schema.focality(code)


def category_name(code: str) -> str:
    from ctray.tasks.grounding.categories import load_categories

    schema = load_categories()
    return schema.name_of(schema.normalize(code) or code).split(" (")[0]


def binarize(mask: np.ndarray, threshold: float) -> np.ndarray:
    return np.asarray(mask) >= threshold


def _gt_stats(uri: str, threshold: float = 0.5) -> dict[str, Any]:
    from ctray.io.volumes import load_volume

    mask, affine, info = load_volume(uri)
    mask = binarize(mask, threshold)
    return {"mask": mask, "affine": affine, "gt_voxels": int(mask.sum()),
            "scan_voxels": int(np.prod(info["shape"]))}


def score_finding(pred_uri: str | None, gt: dict[str, Any],
                  threshold: float = 0.5) -> dict[str, Any]:
    """Dice of one prediction (binarized at ``threshold``) against a loaded GT
    (``_gt_stats``); a problem is reported in ``problem`` and leaves ``dice`` NaN.
    Both masks empty scores 1.0, exactly one empty 0.0 (``dice_score``)."""
    from ctray.io.volumes import load_volume
    from ctray.metrics.segmentation import dice_score

    if pred_uri is None or (isinstance(pred_uri, float) and np.isnan(pred_uri)):
        return {"dice": np.nan, "pred_voxels": np.nan, "problem": "no prediction"}
    try:
        pred, affine, _ = load_volume(pred_uri)
    except OSError as exc:
        return {"dice": np.nan, "pred_voxels": np.nan, "problem": str(exc)}
    pred = binarize(pred, threshold)
    if pred.shape != gt["mask"].shape:
        return {"dice": np.nan, "pred_voxels": int((pred > 0).sum()),
                "problem": f"prediction grid {pred.shape} != GT grid {gt['mask'].shape}"}
    if not np.allclose(affine, gt["affine"], atol=1e-3):
        return {"dice": np.nan, "pred_voxels": int((pred > 0).sum()),
                "problem": "prediction affine differs from the GT affine"}
    return {"dice": dice_score(pred, gt["mask"]), "pred_voxels": int((pred > 0).sum()),
            "problem": None}


def per_finding_scores(gt: pd.DataFrame, preds: dict[str, pd.DataFrame], missing: str,
                       threads: int = 4, threshold: float = 0.5) -> pd.DataFrame:
    """One row per (method, finding): dice, sizes, the problem if any, ``counted``."""
    lookups = {m: dict(zip(p["finding_id"], p["pred_mask_uri"])) for m, p in preds.items()}

    def one(row: dict) -> list[dict]:
        # The GT is read once per finding, whatever the number of methods.
        stats = _gt_stats(row["gt_mask_uri"], threshold)
        base = {**row, "gt_voxels": stats["gt_voxels"], "scan_voxels": stats["scan_voxels"]}
        return [{"method": method, **base, "pred_mask_uri": found.get(row["finding_id"]),
                 **score_finding(found.get(row["finding_id"]), stats, threshold)}
                for method, found in lookups.items()]

    with ThreadPoolExecutor(max(1, threads)) as pool:
        rows = [r for chunk in pool.map(one, gt.to_dict("records")) for r in chunk]
    df = pd.DataFrame(rows)
    failed = df["dice"].isna()
    df["counted"] = ~failed | (missing == "zero")
    if missing == "zero":
        df.loc[failed, "dice"] = 0.0
    return df


def _markdown(df: pd.DataFrame, digits: int = 3) -> str:
    """Pipe table, each column formatted by its own dtype (``iterrows`` would turn
    counts into floats); pandas.to_markdown needs the optional `tabulate`."""
    cols = [str(c) for c in df.columns]
    cells = [[f"{v:.{digits}f}" if isinstance(v, (float, np.floating)) else str(v)
              for v in df[c].tolist()] for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in zip(*cells)]
    return "\n".join(lines)


def _write_markdown(path: Path, title: str, table4: pd.DataFrame, tables: dict[str, pd.DataFrame],
                    notes: list[str]) -> None:
    parts = [f"# {title}", "", "Mean Dice with 95% bootstrap CIs over findings; HIT@t is "
             "the share of findings with Dice above t.", "", _markdown(table4.reset_index()), ""]
    for name, df in tables.items():
        parts += [f"## {name}", "", _markdown(df), ""]
    parts += [f"- {n}" for n in notes]
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")


def run_ground_eval(cfg: GroundEvalConfig) -> dict[str, Any]:
    from ctray.io.manifest import write_job_manifest
    from ctray.metrics.segmentation import (add_groups, format_grounding_table, group_table,
                                            grounding_table, plot_per_category)

    started = time.time()
    out = Path(cfg.run.output)
    out.mkdir(parents=True, exist_ok=True)
    gt = read_ground_truth(cfg.ground_truth)
    labels = [_label(p) for p in cfg.predictions]
    if len(set(labels)) != len(labels):
        labels = [f"{lab}_{k + 1}" for k, lab in enumerate(labels)]
    preds = {lab: read_predictions(p) for lab, p in zip(labels, cfg.predictions)}
    unknown = {lab: int((~p["finding_id"].isin(gt["finding_id"])).sum()) for lab, p in preds.items()}
    if all(n == len(p) for n, p in zip(unknown.values(), preds.values())) and gt.size:
        raise UserError("no predicted finding id is in the ground truth "
                        f"({cfg.ground_truth.path}, column {cfg.ground_truth.id_column!r})")
    scores = add_groups(per_finding_scores(gt, preds, cfg.missing, cfg.read_threads,
                                           cfg.mask_threshold), category_focality)
    scores.to_csv(out / "per_finding.csv", index=False)
    scored = scores[scores["counted"]]
    kw = {"method_col": "method", "n_bootstrap": cfg.n_bootstrap, "seed": cfg.seed}
    table = grounding_table(scored, **kw)
    table.to_csv(out / "table4.csv")
    groups = {by: group_table(scored, by, **kw) for by in ("size_group", "focality", "category")}
    for by, name in (("size_group", "by_size"), ("focality", "by_focality"),
                     ("category", "by_category")):
        groups[by].to_csv(out / f"{name}.csv", index=False)
    plot = plot_per_category(scored, out / "per_category.png", **kw,
                             category_name=category_name)
    problems = scores[scores["problem"].notna()]
    problem_counts = problems.groupby("method")["problem"].size().to_dict()
    notes = [f"{lab}: {int((scores['method'] == lab).sum())} findings, "
             f"{problem_counts.get(lab, 0)} without a usable prediction "
             f"({'scored 0' if cfg.missing == 'zero' else 'left out'}), "
             f"{unknown[lab]} predicted ids not in the ground truth" for lab in labels]
    notes.append(f"{cfg.n_bootstrap} bootstrap resamples, seed {cfg.seed}; size = GT voxels / "
                 "scan voxels, small <= 50th percentile < medium <= 75th < large.")
    notes.append(f"Masks binarized at voxel value >= {cfg.mask_threshold}; a finding whose "
                 "predicted and GT masks are both empty scores Dice 1, exactly one empty 0.")
    _write_markdown(out / "table4.md", cfg.title, format_grounding_table(table),
                    {"Dice by size group": groups["size_group"],
                     "Dice by focality": groups["focality"],
                     "Dice by category": groups["category"]},
                    notes)
    files = {"per_finding": str(out / "per_finding.csv"), "table4_csv": str(out / "table4.csv"),
             "table4_md": str(out / "table4.md"), "per_category_png": plot,
             **{n: str(out / f"{n}.csv") for n in ("by_size", "by_focality", "by_category")}}
    summary = {
        "job": cfg.job, "output": str(out), "methods": labels, "findings": len(gt),
        "without_prediction": {lab: int(problem_counts.get(lab, 0)) for lab in labels},
        "predictions_not_in_gt": unknown,
        "dice": {lab: float(table.loc[lab, "average"]) for lab in labels if lab in table.index},
        "hit10": {lab: float(table.loc[lab, "hit10"]) for lab in labels if lab in table.index},
        "files": files,
    }
    write_job_manifest(cfg, started, **summary)
    print(f"[ctray eval-grounding] {len(gt)} findings; mean Dice "
          + ", ".join(f"{k} {v:.3f}" for k, v in summary["dice"].items())
          + f"; table {out / 'table4.md'}")
    return summary
