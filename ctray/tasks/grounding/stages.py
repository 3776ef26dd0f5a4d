"""The segment stage: text-prompted 3D masks for every finding of a batch, written beside the results."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ctray.errors import UserError
from ctray.pipeline.stage import Resources, RowError, Stage, mark_error
from ctray.tasks.grounding.model_dir import (META_FILE, WEIGHTS_FILE, load_grounding_meta,
                                             load_grounding_model, resolve_encoder)
from ctray.tasks.grounding.preprocess import optional_float

#: manifest columns (defaults of segment's ``manifest`` section)
VOLUME, FINDING_ID, TEXT, SLOPE, INTERCEPT = ("volume_uri", "finding_id", "finding_text",
                                              "slope", "intercept")

if TYPE_CHECKING:  # the job module imports this one
    from ctray.tasks.grounding.segment_job import SegmentConfig


KEY = ("finding_id",)


OUTPUT_COLUMNS = ("mask_uri", "pred_voxels", "scan_voxels", "findings_per_read", "read_id")


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
                                   batch_size=r.batch_size, concurrency=r.concurrency,
                                   in_order=True)

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
