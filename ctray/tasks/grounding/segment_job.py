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

import hashlib
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from ctray.config import JobConfig
from ctray.errors import UserError
from ctray.pipeline.stage import Resources, RowError, Stage, mark_error
from ctray.tasks.grounding.model_dir import (META_FILE, WEIGHTS_FILE, load_grounding_meta,
                                             load_grounding_model, resolve_encoder)
from ctray.tasks.grounding.preprocess import PreprocessConfig, optional_float

log = logging.getLogger(__name__)

KEY = ("finding_id",)
VOLUME, FINDING_ID, TEXT, SLOPE, INTERCEPT = ("volume_uri", "finding_id", "finding_text",
                                              "slope", "intercept")
OUTPUT_COLUMNS = ("mask_uri", "pred_voxels", "scan_voxels", "findings_per_read", "read_id")


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
    # usually share a batch.
    batch_size: int = Field(
        16, description="findings per batch, block and written shard (what a kill can lose)")


class SegmentConfig(JobConfig):
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

def mask_name(finding_id: str) -> str:
    """File-system-safe mask file name; ids that needed escaping get a digest so two
    ids never collide on one file."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(finding_id)).strip("._") or "finding"
    if safe != str(finding_id):
        safe += "-" + hashlib.sha1(str(finding_id).encode("utf-8")).hexdigest()[:8]
    return safe + ".nii.gz"


class SegmentStage(Stage):
    name = "segment"
    input_columns = (VOLUME, FINDING_ID, TEXT)
    output_columns = OUTPUT_COLUMNS
    output_types = {"mask_uri": "string", "pred_voxels": "int64", "scan_voxels": "int64",
                    "findings_per_read": "int64", "read_id": "string"}

    def __init__(self, cfg: SegmentConfig, masks_dir: str):
        self.model_path = cfg.model
        self.encoder_override = cfg.text_encoder
        self.preprocess_override = cfg.preprocess
        self.params = cfg.inference
        self.masks_dir = masks_dir.rstrip("/")
        r = cfg.resources
        self.resources = Resources(num_cpus=r.num_cpus, num_gpus=r.num_gpus,
                                   batch_size=r.batch_size, concurrency=r.concurrency)

    def preflight(self) -> None:
        _, local = load_grounding_meta(self.model_path)
        self._meta_digest = _digest((Path(local) / META_FILE).read_bytes()
                                    + (Path(local) / WEIGHTS_FILE).read_bytes())

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model_path,
                "model_digest": getattr(self, "_meta_digest", None),
                "text_encoder": self.encoder_override,
                "preprocess": None if self.preprocess_override is None
                else self.preprocess_override.model_dump(mode="json"),
                "inference": self.params.model_dump(
                    mode="json", exclude={"sw_batch_size", "prompts_per_pass", "sw_device",
                                          "torch_threads"}),
                "masks_dir": self.masks_dir}

    def setup(self) -> None:
        import torch

        from ctray.tasks.grounding.model import TextEncoder
        from ctray.tasks.grounding.preprocess import build_preprocess

        if self.params.torch_threads:
            torch.set_num_threads(self.params.torch_threads)
        if self.params.sw_device == "auto":
            self.device = torch.device("cuda" if self.resources.num_gpus and
                                       torch.cuda.is_available() else "cpu")
        else:
            self.device = torch.device(self.params.sw_device)
        self.model, meta, local = load_grounding_model(self.model_path, str(self.device))
        self.encoder = TextEncoder(resolve_encoder(meta, local, self.encoder_override),
                                   device=self.device, max_length=meta.text_max_length,
                                   normalize=meta.text_normalize)
        if self.encoder.dim != meta.text_dim:
            raise UserError(f"text encoder width {self.encoder.dim} != the model's "
                            f"text_dim {meta.text_dim}")
        self.preprocess_cfg = self.preprocess_override or meta.preprocess
        self.transform = build_preprocess(self.preprocess_cfg)
        self.roi = tuple(self.params.roi_size or meta.roi_size)
        # The last scan read, preprocessed: rows arrive sorted by volume, so a scan whose
        # findings straddle two batches is read once, not once per batch.
        self._cached: tuple[tuple, Any] | None = None
        self._reads = 0

    def _read(self, uri: str, slope: float | None, intercept: float | None):
        from ctray.io.volumes import load_volume
        from ctray.tasks.grounding.preprocess import preprocess_volume

        key = (uri, slope, intercept)
        if self._cached is not None and self._cached[0] == key:
            return self._cached[1]
        self._cached = None  # free the previous scan before reading the next
        volume, affine, info = load_volume(uri)  # VolumeReadError names the file
        pre = preprocess_volume(volume, affine, slope=slope, intercept=intercept,
                                transform=self.transform)
        del volume
        self._reads += 1
        read = (pre, affine, info, f"{os.getpid()}-{self._reads}")
        self._cached = (key, read)
        return read

    def _segment_volume(self, uri: str, rows: pd.DataFrame) -> list[dict[str, Any]]:
        from ctray.io.volumes import save_mask
        from ctray.tasks.grounding.inference import mask_to_original, segment_volume

        texts = rows[TEXT].tolist()
        first = rows.iloc[0]
        pre, affine, info, read_id = self._read(uri, optional_float(first.get(SLOPE)),
                                                optional_float(first.get(INTERCEPT)))
        embeddings = self.encoder.encode(texts)
        scan_voxels = int(np.prod(info["shape"]))
        out: list[dict[str, Any]] = []
        step = max(1, self.params.prompts_per_pass)
        for start in range(0, len(texts), step):
            masks = segment_volume(self.model, pre, embeddings[start:start + step], self.roi,
                                   self.params.sw_batch_size, sw_device=self.device,
                                   device="cpu", overlap=self.params.overlap,
                                   threshold=self.params.threshold, mode=self.params.mode)
            restored = mask_to_original(masks, pre, self.transform)
            for fid, mask in zip(rows[FINDING_ID].iloc[start:start + step], restored):
                target = save_mask(mask, affine, f"{self.masks_dir}/{mask_name(fid)}",
                                   header=info["header"])
                out.append({"mask_uri": target, "pred_voxels": int(mask.sum()),
                            "scan_voxels": scan_voxels, "findings_per_read": len(texts),
                            "read_id": read_id})
        return out

    def process_batch(self, batch: pd.DataFrame) -> pd.DataFrame:
        batch = batch.reset_index(drop=True)
        records = batch.to_dict("records")
        out: list[dict[str, Any] | None] = [None] * len(batch)
        for i, r in enumerate(records):
            if not isinstance(r[VOLUME], str) or not r[VOLUME].strip():
                out[i] = mark_error(r, self.name, RowError(
                    f"finding {r[FINDING_ID]!r}: empty {VOLUME!r}, no scan to segment"))
            elif not isinstance(r[TEXT], str) or not r[TEXT].strip():
                out[i] = mark_error(r, self.name, RowError(
                    f"finding {r[FINDING_ID]!r}: empty {TEXT!r}, nothing to segment"))
        todo = batch[[o is None for o in out]]
        for uri, idx in todo.groupby(VOLUME, sort=False).indices.items():
            idx = todo.index[idx]
            rows = batch.loc[idx]
            slopes = {(optional_float(r.get(SLOPE)), optional_float(r.get(INTERCEPT)))
                      for r in rows.to_dict("records")}
            try:
                if len(slopes) > 1:
                    raise RowError(f"{uri}: rows of one volume disagree on slope/intercept "
                                   f"{sorted(slopes, key=str)}")
                results = self._segment_volume(str(uri), rows)
            except Exception as exc:  # noqa: BLE001 - a bad scan fails its findings only
                for i in idx:
                    out[i] = mark_error(records[i], self.name, exc)
                continue
            for i, res in zip(idx, results):
                out[i] = {**records[i], **res}
        frame = pd.DataFrame(out)
        for col in ("pred_voxels", "scan_voxels", "findings_per_read"):
            if col in frame:
                # Failed rows leave gaps: a nullable int keeps every shard's Parquet type int64.
                frame[col] = frame[col].astype("Int64")
        return frame


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


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
