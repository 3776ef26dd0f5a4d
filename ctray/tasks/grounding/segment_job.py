"""``ctray segment``: text-prompted 3D segmentation of CT volumes, one mask per finding.

Input: a CSV/Parquet manifest with one row per finding (``volume_uri``,
``finding_id``, ``finding_text``, optional ``slope`` / ``intercept`` for scans
whose rescale values live outside the NIfTI header, as in CT-RATE). The layout
``phantoms.write_phantom_set`` writes (``manifest.csv``) works as it is.

One Ray Data pass through ``run_pipeline`` (resume by ``finding_id``, per-row
errors, ``manifest.json``). The stage's actors load the exported model and the
text encoder once each; a batch's rows are grouped by volume so a scan is read
and preprocessed once and its findings share the sliding-window encoder passes
(``TextFiLMUNet`` takes T prompts per window). Each mask is mapped back to the
scan grid with MONAI's inverse transforms and written as uint8 NIfTI with the
scan's affine and header.

Outputs under ``run.output``: ``results/`` (input columns plus ``mask_uri``,
``pred_voxels``, ``scan_voxels``, ``findings_per_read``, ``read_id``: one per volume
read, so a scan read once gives all its findings one id), ``errors/`` (e.g. an
unreadable volume: every finding of that scan, the message naming the file),
``masks/<finding_id>.nii.gz`` (``masks_dir``), ``manifest.json``.

The model directory format (``train-grounding``'s export) lives in ``model_dir``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from ctray.config import JobConfig
from ctray.errors import UserError
from ctray.tasks.grounding.preprocess import PreprocessConfig
from ctray.tasks.grounding.stages import (FINDING_ID, INTERCEPT, KEY, OUTPUT_COLUMNS, SLOPE, TEXT,
                                         VOLUME, SegmentStage)

log = logging.getLogger(__name__)



# ----------------------------------------------------------------------------- config

class ManifestInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="CSV or Parquet, one row per finding")
    volume_column: str = Field(VOLUME, description="column holding the CT volume URI")
    id_column: str = Field(FINDING_ID, description="column holding the finding id")
    text_column: str = Field(TEXT, description="column holding the finding text (the prompt)")
    slope_column: str | None = Field(
        SLOPE, description="column holding the HU slope (None: PreprocessConfig.slope)")
    intercept_column: str | None = Field(
        INTERCEPT, description="column holding the HU intercept (None: "
        "PreprocessConfig.intercept)")
    limit: int | None = Field(None, description="first N findings (after sorting by volume)")


class InferenceParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    roi_size: tuple[int, int, int] | None = Field(
        None, description="sliding-window size (default: the model's training crop)")
    sw_batch_size: int = Field(4, description="windows per forward pass")
    overlap: float = Field(0.25, description="overlap of neighbouring windows (0-1)")
    mode: Literal["gaussian", "constant"] = Field(
        "gaussian", description="blending of overlapping windows")
    threshold: float = Field(0.5, description="probability above which a voxel is in the mask")
    # Prompts decoded per sliding-window pass: each holds a full-size float32 logit
    # map on the CPU (315 MB at 512x512x300), so this bounds the memory per actor.
    prompts_per_pass: int = Field(
        4, description="prompts decoded per sliding-window pass (bounds memory per actor)")
    # "auto": CUDA when the actor has a GPU.
    sw_device: str = Field(
        "auto", description="device of the sliding window (auto: CUDA when the actor has a GPU)")
    torch_threads: int | None = Field(
        None, description="torch threads per actor (None: torch's default)")


class StageResources(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Fractional on purpose: an actor pool holding every CPU of a 2-core machine
    # leaves none for the read and write tasks and the pipeline stalls.
    num_cpus: float = Field(1.0, description="CPUs per segmentation actor")
    num_gpus: float = Field(0.0, description="GPUs per segmentation actor")
    concurrency: int | tuple[int, int] = Field(
        1, description="segmentation actors: n, or (min, max) to autoscale")
    # Findings per batch (also per block and per written shard, so a kill loses at
    # most this many findings); rows are sorted by volume, so a scan's findings
    # share a batch or two consecutive ones (the run keeps their order).
    batch_size: int = Field(
        16, description="findings per batch, block and written shard (what a kill can lose)")


class SegmentConfig(JobConfig):
    #: which rows are read and how inference is batched and placed
    result_neutral_fields: ClassVar[frozenset[str]] = frozenset({
        "manifest.limit", "inference.sw_batch_size", "inference.prompts_per_pass",
        "inference.sw_device", "inference.torch_threads"})
    job: str = "segment"
    manifest: ManifestInput = Field(description="the findings to segment (volume, id, text)")
    model: str = Field(description="train-grounding export directory (local or s3://)")
    text_encoder: str | None = Field(
        None, description="text encoder (default: the one recorded in the model directory)")
    preprocess: PreprocessConfig | None = Field(
        None, description="volume preprocessing (default: the model's training preprocessing)")
    masks_dir: str | None = Field(
        None, description="where masks are written (default <run.output>/masks)")
    inference: InferenceParams = Field(
        default_factory=InferenceParams, description="sliding-window inference settings")
    resources: StageResources = Field(
        default_factory=StageResources, description="resources of the segmentation stage")


# ----------------------------------------------------------------------------- stage


# ----------------------------------------------------------------------------- driver side

def absolute_local(uri: str) -> str:
    return uri if "://" in uri or not uri else str(Path(uri).resolve())


def _volume_cell(value: Any) -> str | None:
    """A manifest's volume cell: None when empty (a row error in the stage, not a
    TypeError that stops the job), else an absolute local path or a URI."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return None
    text = str(value).strip()
    return absolute_local(text) if text else None


def read_manifest(inp: ManifestInput) -> pd.DataFrame:
    """The manifest with canonical column names, sorted by volume (stable), so a
    scan's findings arrive in one batch."""
    path = inp.path
    if path.endswith(".parquet"):
        df = pd.read_parquet(path)
    elif path.endswith(".csv"):
        df = pd.read_csv(path)
    else:
        raise UserError(f"{path}: manifest must be a .csv or .parquet file")
    rename = {inp.volume_column: VOLUME, inp.id_column: FINDING_ID, inp.text_column: TEXT}
    for src, dst in ((inp.slope_column, SLOPE), (inp.intercept_column, INTERCEPT)):
        if src and src in df.columns:
            rename[src] = dst
    missing = [c for c in (inp.volume_column, inp.id_column, inp.text_column) if c not in df.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {missing}; have {list(df.columns)}")
    # Input columns pass through to the results; a ground-truth `mask_uri` (the phantom
    # manifest has one) must not be mistaken for the predicted mask.
    clash = {c: f"input_{c}" for c in OUTPUT_COLUMNS if c in df.columns and c not in rename}
    if "mask_uri" in clash:
        clash["mask_uri"] = "gt_mask_uri"
    df = df.rename(columns={**clash, **rename})
    for col in (SLOPE, INTERCEPT):
        if col not in df:
            df[col] = np.nan
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    df[FINDING_ID] = df[FINDING_ID].astype(str)
    # Relative paths mean "from where the job was started"; Ray workers run elsewhere.
    # A string column (missing = NaN): an object column would reach Ray Data as pickled
    # Python objects, which pandas cannot index.
    df[VOLUME] = df[VOLUME].map(_volume_cell).astype("str")
    if "gt_mask_uri" in df:
        df["gt_mask_uri"] = df["gt_mask_uri"].map(
            lambda v: absolute_local(str(v)) if isinstance(v, str) else v)
    dups = df[FINDING_ID][df[FINDING_ID].duplicated()].unique().tolist()
    if dups:
        raise UserError(f"{path}: duplicate {inp.id_column!r} values {dups[:5]}; ids must be "
                        "unique for resume and for one mask file per finding")
    df = df.sort_values(VOLUME, kind="stable", ignore_index=True, na_position="last")
    if inp.limit is not None:
        df = df.head(inp.limit)
    return df


def run_segment(cfg: SegmentConfig) -> dict[str, Any]:
    import ray

    from ctray.pipeline.job import run_spec
    from ctray.pipeline.runner import run_pipeline

    started = time.time()
    output = cfg.run.output.rstrip("/")
    masks_dir = absolute_local(cfg.masks_dir or f"{output}/masks")
    if Path(cfg.model).exists():
        cfg = cfg.model_copy(update={"model": absolute_local(cfg.model)})
    df = read_manifest(cfg.manifest)
    stage = SegmentStage(cfg, masks_dir)
    spec = run_spec(cfg, KEY, fingerprint={"manifest_columns": sorted(df.columns)})
    # Keys were checked in pandas above: skip the cluster-side groupby.
    spec.check_duplicate_keys = False
    # A finding costs seconds, not microseconds: small blocks and shards bound what
    # a kill loses (the default writer batch would hold 256 findings in flight).
    spec.rows_per_block = spec.writer_batch_size = cfg.resources.batch_size
    # The stage keeps the last scan it read and runs in order (Resources.in_order): a
    # scan whose findings straddle two batches is read once per actor (with several
    # actors it may be read twice).
    ds = ray.data.from_pandas(df)
    summary = run_pipeline(ds, [stage], spec, extra_manifest={"masks_dir": masks_dir})
    result = {"job": cfg.job, "output": summary.output, "masks_dir": masks_dir,
              "ok": summary.ok, "failed": summary.failed, "skipped": summary.skipped,
              "findings": len(df), "volumes": int(df[VOLUME].nunique()),
              "wall_time_s": round(time.time() - started, 3)}
    print(f"[ctray segment] {summary.ok} findings segmented, {summary.failed} failed, "
          f"{summary.skipped} already done; masks in {masks_dir}, results in "
          f"{summary.output}/results, errors in {summary.output}/errors")
    return result
