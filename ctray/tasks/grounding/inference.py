"""Sliding-window segmentation of a preprocessed volume, and the way back to the scan grid.

Windows run on ``sw_device`` (the accelerator) while the full-volume logit map is
stitched on ``device`` (CPU by default): a 512×512×300 map with a few prompts
does not fit next to the model on small GPUs, and the CPU copy is what gets
written anyway.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from monai.transforms import Compose, Invertd

from ctray.tasks.grounding.preprocess import IMAGE_KEY, PreprocessConfig, build_preprocess

PRED_KEY = "pred"


def default_sw_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _as_batch(volume: torch.Tensor | np.ndarray) -> torch.Tensor:
    """(X, Y, Z) / (1, X, Y, Z) / (1, 1, X, Y, Z) → plain float tensor (1, 1, X, Y, Z)."""
    t = volume.as_tensor() if isinstance(volume, MetaTensor) else torch.as_tensor(volume)
    while t.ndim < 5:
        t = t.unsqueeze(0)
    if t.ndim != 5 or t.shape[:2] != (1, 1):
        raise ValueError(f"expected one single-channel 3D volume, got shape {tuple(volume.shape)}")
    return t.float()


def predict_logits(model: torch.nn.Module, volume: torch.Tensor | np.ndarray,
                   text_embedding: torch.Tensor, roi_size: Sequence[int], sw_batch_size: int = 1,
                   sw_device: str | torch.device | None = None,
                   device: str | torch.device = "cpu", overlap: float = 0.25,
                   mode: str = "gaussian") -> torch.Tensor:
    """Logits ``(T, X, Y, Z)`` on ``device`` for T prompts (``text_embedding`` (T, E) or (E,)).

    The model is moved to ``sw_device`` (default: CUDA when available) and put in
    eval mode. Gaussian blending down-weights window borders, where a U-Net sees
    the least context.
    """
    sw_device = torch.device(sw_device) if sw_device is not None else default_sw_device()
    emb = torch.as_tensor(text_embedding, dtype=torch.float32)
    if emb.ndim == 1:
        emb = emb[None]
    if emb.ndim != 2:
        raise ValueError(f"text_embedding must be (E,) or (T, E), got {tuple(emb.shape)}")
    model = model.to(sw_device).eval()
    image = _as_batch(volume)
    with torch.inference_mode():
        logits = sliding_window_inference(
            image, roi_size=tuple(roi_size), sw_batch_size=sw_batch_size, predictor=model,
            overlap=overlap, mode=mode, sw_device=sw_device, device=torch.device(device),
            text_embedding=emb[None].to(sw_device))
    if isinstance(logits, MetaTensor):
        logits = logits.as_tensor()
    return logits[0]


def segment_volume(model: torch.nn.Module, volume_tensor: torch.Tensor | np.ndarray,
                   text_embedding: torch.Tensor, roi_size: Sequence[int], sw_batch_size: int = 1,
                   sw_device: str | torch.device | None = None,
                   device: str | torch.device = "cpu", overlap: float = 0.25,
                   threshold: float = 0.5, mode: str = "gaussian") -> np.ndarray:
    """Binary uint8 masks on the preprocessed grid: ``(X, Y, Z)`` for a ``(E,)``
    embedding, ``(T, X, Y, Z)`` for ``(T, E)`` (one mask per finding sentence)."""
    logits = predict_logits(model, volume_tensor, text_embedding, roi_size, sw_batch_size,
                            sw_device, device, overlap, mode)
    # sigmoid(z) > p  <=>  z > logit(p): no full-size probability map needed.
    cut = math.log(threshold / (1.0 - threshold))
    mask = (logits > cut).to(torch.uint8).cpu().numpy()
    return mask[0] if torch.as_tensor(text_embedding).ndim == 1 else mask


def mask_to_original(mask: np.ndarray | torch.Tensor, preprocessed: MetaTensor,
                     preprocess: Compose | PreprocessConfig | Mapping[str, Any] | None = None,
                     nearest: bool = False, threshold: float = 0.5) -> np.ndarray:
    """Undo the preprocessing's spatial steps (resize, resampling, reorientation) on a
    mask or probability map so it lines up with the scan as stored.

    ``preprocessed`` is the image ``preprocess_volume`` returned (its
    ``applied_operations`` say what to undo); ``preprocess`` is the same Compose
    or config. ``mask`` is ``(X', Y', Z')`` or ``(T, X', Y', Z')``; returns uint8 in
    the original ``(X, Y, Z)`` (or ``(T, X, Y, Z)``) grid. By default the inverse
    resize is linear followed by ``>= threshold``, which gives smoother outlines
    than nearest-neighbour when a 512² mask goes back to a smaller or larger scan.
    """
    if preprocess is None or not isinstance(preprocess, Compose):
        preprocess = build_preprocess(preprocess)
    arr = torch.as_tensor(np.asarray(mask), dtype=torch.float32)
    single = arr.ndim == 3
    if single:
        arr = arr[None]
    if tuple(arr.shape[1:]) != tuple(preprocessed.shape[1:]):
        raise ValueError(f"mask grid {tuple(arr.shape[1:])} != preprocessed grid "
                         f"{tuple(preprocessed.shape[1:])}")
    # The preprocessed image's meta (affine included) marks the grid the mask is on.
    pred = MetaTensor(arr, meta=dict(preprocessed.meta))
    inverter = Invertd(PRED_KEY, transform=preprocess, orig_keys=IMAGE_KEY, nearest_interp=nearest)
    restored = inverter({IMAGE_KEY: preprocessed, PRED_KEY: pred})[PRED_KEY]
    out = (torch.as_tensor(restored) >= threshold).to(torch.uint8).numpy()
    return out[0] if single else out
