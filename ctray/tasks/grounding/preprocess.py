"""CT preprocessing for grounding (ReXGroundingCT §3.6) as MONAI dictionary transforms.

raw → HU (``slope * raw + intercept``) → optional reorientation and isotropic
resampling → window [-600, 1500] clipped and scaled to [0, 1] → axial slices
resized to 512×512 with the depth unchanged.

Axis convention: tensors are channel-first ``(C, X, Y, Z)`` in nibabel's voxel
order. After ``Orientationd("RAS")`` (on by default) the voxel axes point to
Right, Anterior, Superior, so **depth (the axial slice index) is the last axis**
whatever order the file stored them in; that is why the resize is
``(512, 512, -1)`` and why it is only correct after reorientation (or for files
already stored axial-last, which is how CT-RATE's NIfTIs are written).

Every spatial step is invertible, so predictions are mapped back to the original
grid with MONAI's own inverse (``inference.mask_to_original``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (Compose, MapTransform, Orientationd, Resized,
                              ScaleIntensityRanged, Spacingd)
from pydantic import BaseModel, ConfigDict, Field

IMAGE_KEY = "image"
SLOPE_KEY = "slope"
INTERCEPT_KEY = "intercept"


class PreprocessConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The paper's window for lung findings; below -600 HU (lung, air) all maps to 0.
    window: tuple[float, float] = Field(
        (-600.0, 1500.0), description="HU window (low, high) mapped to [0, 1]")
    # Axial (X, Y) size; depth is never resized. None skips resizing.
    axial_size: tuple[int, int] | None = Field(
        (512, 512), description="axial (X, Y) size; depth is never resized; None: no resize")
    resize_mode: str = Field("trilinear", description="interpolation of the resize (MONAI mode)")
    # None keeps the stored axis order (only safe when depth is already last).
    orientation: str | None = Field(
        "RAS", description="axis codes to reorient to (None: keep the stored order)")
    # e.g. (1.0, 1.0, 1.0) for isotropic resampling; applied before the resize.
    pixdim: tuple[float, float, float] | None = Field(
        None, description="voxel spacing to resample to before the resize (None: keep)")
    # Defaults when an item carries no slope/intercept (header scaling is already
    # applied by nibabel, so files with scl_slope need none here).
    slope: float = Field(1.0, description="HU slope when an item carries none")
    intercept: float = Field(0.0, description="HU intercept when an item carries none")


class ToHUd(MapTransform):
    """``HU = slope * raw + intercept`` with per-item values.

    MONAI has no rescale-slope transform; CT-RATE keeps RescaleSlope/RescaleIntercept
    in a metadata CSV, so each item brings its own pair under ``slope_key`` /
    ``intercept_key`` (falling back to the defaults when absent or None).
    """

    def __init__(self, keys: KeysCollection, slope_key: str = SLOPE_KEY,
                 intercept_key: str = INTERCEPT_KEY, default_slope: float = 1.0,
                 default_intercept: float = 0.0, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.slope_key, self.intercept_key = slope_key, intercept_key
        self.default_slope, self.default_intercept = default_slope, default_intercept

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        slope = optional_float(d.get(self.slope_key))
        intercept = optional_float(d.get(self.intercept_key))
        slope = self.default_slope if slope is None else slope
        intercept = self.default_intercept if intercept is None else intercept
        for key in self.key_iterator(d):
            img = d[key]
            if not torch.is_floating_point(torch.as_tensor(img)):
                img = img.float() if isinstance(img, torch.Tensor) else np.asarray(img, np.float32)
            d[key] = img * slope + intercept
        return d


def optional_float(value: Any) -> float | None:
    """None for a missing value. A manifest read with pandas/Ray Data holds NaN, not
    None, where a row has no slope/intercept: both mean "not given", never "make every
    voxel NaN"."""
    try:
        value = float(value)
    except TypeError:  # None, pandas.NA
        return None
    return None if np.isnan(value) else value


def _config(cfg: PreprocessConfig | Mapping[str, Any] | None) -> PreprocessConfig:
    if cfg is None:
        return PreprocessConfig()
    return cfg if isinstance(cfg, PreprocessConfig) else PreprocessConfig(**dict(cfg))


def build_preprocess(cfg: PreprocessConfig | Mapping[str, Any] | None = None,
                     label_keys: Sequence[str] = ()) -> Compose:
    """The preprocessing ``Compose`` over ``{"image": (1, X, Y, Z) MetaTensor, ...}``.

    ``label_keys`` name masks that follow the image spatially (nearest-neighbour)
    but skip the intensity steps, e.g. ground-truth masks for training.
    """
    cfg = _config(cfg)
    labels = list(label_keys)
    spatial = [IMAGE_KEY, *labels]
    nearest = ["nearest"] * len(labels)
    # torch's "nearest" picks floor(i * scale), up to half an output voxel off the
    # trilinear image samples; "nearest-exact" samples the same centres as the image.
    nearest_resize = ["nearest-exact"] * len(labels)
    lo, hi = cfg.window
    steps: list = []
    if cfg.orientation:
        # labels=None: use the MetaTensor's own space (RAS for nibabel-loaded data).
        steps.append(Orientationd(spatial, axcodes=cfg.orientation, labels=None))
    steps.append(ToHUd(IMAGE_KEY, default_slope=cfg.slope, default_intercept=cfg.intercept))
    if cfg.pixdim is not None:
        steps.append(Spacingd(spatial, pixdim=cfg.pixdim, mode=["bilinear", *nearest],
                              dtype=np.float32))
    steps.append(ScaleIntensityRanged(IMAGE_KEY, a_min=lo, a_max=hi, b_min=0.0, b_max=1.0,
                                      clip=True))
    if cfg.axial_size is not None:
        # anti_aliasing only acts when shrinking (512² from larger scans); -1 keeps depth.
        steps.append(Resized(spatial, spatial_size=(*cfg.axial_size, -1),
                             mode=[cfg.resize_mode, *nearest_resize], anti_aliasing=[True] + [False] * len(labels)))
    return Compose(steps)


def make_item(volume: np.ndarray | torch.Tensor, affine: np.ndarray,
              slope: float | None = None, intercept: float | None = None,
              labels: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Wrap a 3D ``(X, Y, Z)`` array and its affine as the dict ``build_preprocess`` expects."""
    aff = torch.as_tensor(np.asarray(affine, dtype=np.float64))
    item: dict[str, Any] = {
        IMAGE_KEY: MetaTensor(torch.as_tensor(np.asarray(volume))[None], affine=aff.clone()),
        SLOPE_KEY: slope, INTERCEPT_KEY: intercept,
    }
    for key, arr in (labels or {}).items():
        item[key] = MetaTensor(torch.as_tensor(np.asarray(arr, dtype=np.float32))[None],
                               affine=aff.clone())
    return item


def preprocess_volume(volume: np.ndarray, affine: np.ndarray,
                      cfg: PreprocessConfig | Mapping[str, Any] | None = None,
                      slope: float | None = None, intercept: float | None = None,
                      transform: Compose | None = None) -> MetaTensor:
    """One volume → preprocessed ``(1, X', Y', Z')`` MetaTensor in [0, 1].

    The result carries its affine and the applied operations, which is what
    ``inference.mask_to_original`` inverts (it pickles, so it survives Ray).
    """
    transform = transform or build_preprocess(cfg)
    return transform(make_item(volume, affine, slope, intercept))[IMAGE_KEY]
