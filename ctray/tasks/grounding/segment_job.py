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
``pred_voxels``, ``scan_voxels``, ``findings_per_read``), ``errors/`` (e.g. an
unreadable volume: every finding of that scan, the message naming the file),
``masks/<finding_id>.nii.gz`` (``masks_dir``), ``manifest.json``.

The model directory (``train-grounding``'s export) is also defined here, since
this job is the one that loads it: ``model.pt`` (state dict),
``ctray_grounding.json`` (architecture, preprocessing, ROI, text encoder) and
``text_encoder/`` (a copy of a local encoder, so the directory is self-contained).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from ctray.config import JobConfig
from ctray.errors import UserError
from ctray.pipeline.stage import Resources, RowError, Stage, mark_error
from ctray.tasks.grounding.preprocess import PreprocessConfig, optional_float

log = logging.getLogger(__name__)

META_FILE = "ctray_grounding.json"
WEIGHTS_FILE = "model.pt"
ENCODER_DIR = "text_encoder"
KEY = ("finding_id",)
VOLUME, FINDING_ID, TEXT, SLOPE, INTERCEPT = ("volume_uri", "finding_id", "finding_text",
                                              "slope", "intercept")
OUTPUT_COLUMNS = ("mask_uri", "pred_voxels", "scan_voxels", "findings_per_read")


# ----------------------------------------------------------------------------- model directory

class GroundingModelMeta(BaseModel):
    """What ``segment`` needs to rebuild and run a trained ``TextFiLMUNet``."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    text_encoder: str  # relative to the model directory, an absolute path or a hub id
    text_dim: int
    features: tuple[int, int, int, int, int, int]
    text_max_length: int = 128
    text_normalize: bool = False
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    # The training crop: the natural sliding-window size.
    roi_size: tuple[int, int, int] = (96, 96, 96)
    metrics: dict[str, Any] = Field(default_factory=dict)


def save_grounding_model(out_dir: str | os.PathLike, state_dict: dict, meta: GroundingModelMeta,
                         copy_encoder: bool = True) -> str:
    """Write ``model.pt`` + ``ctray_grounding.json``; a local text encoder is copied into
    ``text_encoder/`` so the directory can be shipped to a cluster on its own."""
    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    encoder = meta.text_encoder
    if copy_encoder and Path(encoder).is_dir() and Path(encoder).resolve() != (out / ENCODER_DIR).resolve():
        shutil.copytree(encoder, out / ENCODER_DIR, dirs_exist_ok=True)
        meta = meta.model_copy(update={"text_encoder": ENCODER_DIR})
    torch.save(state_dict, out / WEIGHTS_FILE)
    (out / META_FILE).write_text(json.dumps(meta.model_dump(mode="json"), indent=2), encoding="utf-8")
    return str(out)


def _local_dir(path: str) -> str:
    from ctray.tasks.findings.model import local_model_dir

    return local_model_dir(path)


def load_grounding_meta(path: str) -> tuple[GroundingModelMeta, str]:
    """(meta, local directory); ``s3://`` / ``gs://`` directories are copied once to a cache."""
    local = _local_dir(path)
    meta_path = Path(local) / META_FILE
    if not meta_path.is_file():
        raise UserError(f"{path}: not a train-grounding model directory (no {META_FILE})")
    return GroundingModelMeta.model_validate_json(meta_path.read_text(encoding="utf-8")), local


def resolve_encoder(meta: GroundingModelMeta, local_dir: str, override: str | None = None) -> str:
    ref = override or meta.text_encoder
    inside = Path(local_dir) / ref
    return str(inside) if not os.path.isabs(ref) and inside.exists() else _local_dir(ref)


def build_model(meta: GroundingModelMeta):
    from ctray.tasks.grounding.model import TextFiLMUNet

    return TextFiLMUNet(meta.text_dim, features=tuple(meta.features))


def load_grounding_model(path: str, device: str = "cpu"):
    """(model in eval mode on ``device``, meta, local directory)."""
    import torch

    meta, local = load_grounding_meta(path)
    model = build_model(meta)
    state = torch.load(Path(local) / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval(), meta, local


# ----------------------------------------------------------------------------- config

class ManifestInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="CSV or Parquet, one row per finding")
    volume_column: str = VOLUME
    id_column: str = FINDING_ID
    text_column: str = TEXT
    slope_column: str | None = SLOPE
    intercept_column: str | None = INTERCEPT
    limit: int | None = None  # first N findings (after sorting by volume)


class InferenceParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    roi_size: tuple[int, int, int] | None = None  # default: the model's training crop
    sw_batch_size: int = 4
    overlap: float = 0.25
    mode: Literal["gaussian", "constant"] = "gaussian"
    threshold: float = 0.5
    # Prompts decoded per sliding-window pass: each holds a full-size float32 logit
    # map on the CPU (315 MB at 512x512x300), so this bounds the memory per actor.
    prompts_per_pass: int = 4
    # "auto": CUDA when the actor has a GPU.
    sw_device: str = "auto"
    torch_threads: int | None = None


class StageResources(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Fractional on purpose: an actor pool holding every CPU of a 2-core machine
    # leaves none for the read and write tasks and the pipeline stalls.
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    concurrency: int | tuple[int, int] = 1
    # Findings per batch (also per block and per written shard, so a kill loses at
    # most this many findings); rows are sorted by volume, so a scan's findings
    # usually share a batch.
    batch_size: int = 16


class SegmentConfig(JobConfig):
    job: str = "segment"
    manifest: ManifestInput
    model: str = Field(description="train-grounding export directory (local or s3://)")
    text_encoder: str | None = None  # default: the one recorded in the model directory
    preprocess: PreprocessConfig | None = None  # default: the model's training preprocessing
    masks_dir: str | None = None  # default <run.output>/masks
    inference: InferenceParams = Field(default_factory=InferenceParams)
    resources: StageResources = Field(default_factory=StageResources)


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

    def _segment_volume(self, uri: str, rows: pd.DataFrame) -> list[dict[str, Any]]:
        from ctray.io.volumes import load_volume, save_mask
        from ctray.tasks.grounding.inference import mask_to_original, segment_volume
        from ctray.tasks.grounding.preprocess import preprocess_volume

        texts = rows[TEXT].tolist()
        volume, affine, info = load_volume(uri)  # VolumeReadError names the file
        first = rows.iloc[0]
        pre = preprocess_volume(volume, affine, slope=optional_float(first.get(SLOPE)),
                                intercept=optional_float(first.get(INTERCEPT)),
                                transform=self.transform)
        del volume
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
                            "scan_voxels": scan_voxels, "findings_per_read": len(texts)})
        return out

    def process_batch(self, batch: pd.DataFrame) -> pd.DataFrame:
        batch = batch.reset_index(drop=True)
        records = batch.to_dict("records")
        out: list[dict[str, Any] | None] = [None] * len(batch)
        for i, r in enumerate(records):
            if not isinstance(r[TEXT], str) or not r[TEXT].strip():
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
    df[VOLUME] = df[VOLUME].astype(str).map(absolute_local)
    if "gt_mask_uri" in df:
        df["gt_mask_uri"] = df["gt_mask_uri"].map(
            lambda v: absolute_local(str(v)) if isinstance(v, str) else v)
    dups = df[FINDING_ID][df[FINDING_ID].duplicated()].unique().tolist()
    if dups:
        raise UserError(f"{path}: duplicate {inp.id_column!r} values {dups[:5]}; ids must be "
                        "unique for resume and for one mask file per finding")
    df = df.sort_values(VOLUME, kind="stable", ignore_index=True)
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
