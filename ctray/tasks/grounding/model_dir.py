"""The grounding model directory: what ``train-grounding`` exports and ``segment`` loads.

``model.pt`` (state dict), ``ctray_grounding.json`` (architecture, preprocessing,
ROI, text encoder) and ``text_encoder/`` (a copy of a local encoder, so the
directory is self-contained and can be shipped to a cluster on its own).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ctray.errors import UserError
from ctray.tasks.grounding.preprocess import PreprocessConfig

META_FILE = "ctray_grounding.json"
WEIGHTS_FILE = "model.pt"
ENCODER_DIR = "text_encoder"


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
    from ctray.io.storage import local_model_dir

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
