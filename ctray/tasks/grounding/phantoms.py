"""Synthetic chest-CT phantoms with text-described findings and ground-truth masks.

Arrays are ``(X, Y, Z)`` with a diagonal RAS affine: +X toward the patient's right,
+Y anterior, +Z superior, so the right lung sits at high X, "dependent" (a supine
patient's back) is low Y, and the upper lobes are at high Z (depth is the last axis).

Anatomy (HU): air -1000 outside an elliptical body of soft tissue (40), two lungs
(-800) that taper toward the apices, a vertebral body and rib bands (700).
Findings, painted in a fixed order so a later one overrides an earlier one and
each mask holds only the voxels that finding still owns:

=============== ====== ===================================== ==============
kind            code   appearance                            HU
=============== ====== ===================================== ==============
ground_glass    2c     patchy, over both upper lobes         -500
micronodules    1e     tens of 2-4 mm dots in one lower lobe 20
consolidation   2b     irregular blob in one lower lobe      30
effusion        2e     dependent (posterior) basal crescent  10
nodule          2d     sphere in one upper lobe              40
=============== ====== ===================================== ==============

Category codes follow the paper's schema (``categories.json``): 1x non-focal,
2x focal. Sizes are physical (mm) but never smaller than about a voxel, and the
text states the size actually drawn, so a coarse test phantom says "A 19 mm
nodule" where a 512×512×300 one says "A 6 mm nodule".
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

AIR_HU, SOFT_HU, LUNG_HU, BONE_HU = -1000.0, 40.0, -800.0, 700.0
FINDING_HU = {"ground_glass": -500.0, "micronodules": 20.0, "consolidation": 30.0,
              "effusion": 10.0, "nodule": 40.0}
CATEGORY = {"ground_glass": "2c", "micronodules": "1e", "consolidation": "2b",
            "effusion": "2e", "nodule": "2d"}
PAINT_ORDER = ("ground_glass", "micronodules", "consolidation", "effusion", "nodule")
FINDING_KINDS = PAINT_ORDER
DEFAULT_FINDINGS = ("nodule", "effusion", "consolidation", "ground_glass")
# Field of view of the default affine: a 350 mm axial FOV and 300 mm of chest.
FOV_MM = (350.0, 350.0, 300.0)
MANIFEST_COLUMNS = ["volume_id", "volume_uri", "finding_id", "finding_text", "category",
                    "kind", "mask_uri", "gt_voxels", "slope", "intercept"]


def default_affine(shape: Sequence[int]) -> np.ndarray:
    """Diagonal RAS affine spanning ``FOV_MM``, centred on the origin."""
    spacing = np.array(FOV_MM) / np.asarray(shape[:3], dtype=float)
    aff = np.diag([*spacing, 1.0])
    aff[:3, 3] = -spacing * (np.asarray(shape[:3]) - 1) / 2.0
    return aff


class _Grid:
    """Broadcastable normalised coordinates (-1..1) and voxel sizes of one phantom."""

    def __init__(self, shape: Sequence[int], affine: np.ndarray):
        self.shape = tuple(int(s) for s in shape)
        self.spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
        axes = [(np.arange(n, dtype=np.float32) + 0.5) / n * 2.0 - 1.0 for n in self.shape]
        self.u = axes[0][:, None, None]
        self.v = axes[1][None, :, None]
        self.w = axes[2][None, None, :]

    def to_vox(self, u: float, v: float, w: float) -> np.ndarray:
        return np.array([(c + 1.0) / 2.0 * n - 0.5 for c, n in zip((u, v, w), self.shape)])


def _ellipsoid_local(shape: tuple[int, ...], center: np.ndarray, radii: np.ndarray
                     ) -> tuple[tuple[slice, ...], np.ndarray]:
    """Boolean ellipsoid (radii in voxels) as (bounding-box slices, local mask), so
    placing many small shapes in a 512²×300 volume never touches the whole array."""
    lo = np.maximum(np.floor(center - radii).astype(int), 0)
    hi = np.maximum(np.minimum(np.ceil(center + radii).astype(int) + 1, shape), lo)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    idx = np.ogrid[box]
    dist = sum(((i - c) / r) ** 2 for i, c, r in zip(idx, center, radii))
    return box, np.broadcast_to(dist <= 1.0, tuple(b - a for a, b in zip(lo, hi))).copy()


def _smooth_field(shape: tuple[int, ...], rng: np.random.Generator, cells: int = 6) -> np.ndarray:
    """Smooth random field in [0, 1]: coarse noise zoomed up, cheap even at 512²×300."""
    coarse = rng.random((cells, cells, cells)).astype(np.float32)
    zoomed = ndimage.zoom(coarse, [s / cells for s in shape], order=1, grid_mode=True,
                          mode="nearest")
    return zoomed[tuple(slice(0, s) for s in shape)]


def _anatomy(g: _Grid, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    body = (g.u / 0.85) ** 2 + (g.v / 0.62) ** 2 <= 1.0
    body = np.broadcast_to(body, g.shape)
    # Lungs taper toward the apex (high Z) and stop above the diaphragm.
    taper = np.sqrt(np.clip((0.95 - g.w) / 0.45, 0.0, 1.0))
    lungs = {}
    for side, cu in (("right", 0.42), ("left", -0.42)):
        inside = ((g.u - cu) / 0.27) ** 2 + ((g.v - 0.02) / 0.42) ** 2 <= taper ** 2
        lungs[side] = inside & (g.w > -0.8)
    spine = np.broadcast_to((g.u / 0.09) ** 2 + ((g.v + 0.45) / 0.09) ** 2 <= 1.0, g.shape)
    shell = (g.u / 0.8) ** 2 + (g.v / 0.58) ** 2
    ribs = (shell >= 0.86) & (shell <= 1.0) & (np.sin(g.w * np.pi * 7.0) > 0.4)
    vol = np.full(g.shape, AIR_HU, dtype=np.float32)
    vol[body] = SOFT_HU
    for mask in lungs.values():
        vol[mask] = LUNG_HU
    vol[spine | (ribs & body)] = BONE_HU
    return vol, {"body": body, **lungs}


def _lobe(g: _Grid, lung: np.ndarray, upper: bool) -> np.ndarray:
    return lung & ((g.w > 0.15) if upper else (g.w < -0.1))


def _draw_nodule(g, lungs, rng):
    side = rng.choice(["right", "left"])
    region = _lobe(g, lungs[side], upper=True)
    radius_mm = max(rng.uniform(2.5, 6.0), float(g.spacing.max()))
    radii = np.maximum(radius_mm / g.spacing, 1.0)
    candidates = np.argwhere(region)
    for _ in range(200):  # rejection sampling: the whole sphere must sit inside the lung
        center = candidates[rng.integers(len(candidates))].astype(float)
        box, local = _ellipsoid_local(g.shape, center, radii)
        if not (local & ~lungs[side][box]).any():
            break
    mask = np.zeros(g.shape, dtype=bool)
    mask[box] = local & lungs[side][box]
    return mask, f"A {2 * radius_mm:.0f} mm nodule in the {side} upper lobe"


def _draw_effusion(g, lungs, rng):
    side = rng.choice(["right", "left"])
    taper = np.sqrt(np.clip((0.95 - g.w) / 0.45, 0.0, 1.0))
    frac = rng.uniform(0.2, 0.35)
    # Fluid settles posteriorly: the lowest `frac` of each lung section, lower half only.
    level = 0.02 - 0.42 * taper * (1.0 - 2.0 * frac)
    mask = lungs[side] & (g.v < level) & (g.w < 0.2)
    size = "small" if frac < 0.27 else "moderate"
    return mask, f"A {size} {side} pleural effusion layering dependently"


def _draw_consolidation(g, lungs, rng):
    side = rng.choice(["right", "left"])
    region = _lobe(g, lungs[side], upper=False)
    # Centre in the anterior half so a dependent effusion cannot swallow the blob.
    candidates = np.argwhere(region & (g.v > 0.05))
    center = candidates[rng.integers(len(candidates))].astype(float)
    radii = np.maximum(rng.uniform(15.0, 30.0, size=3) / g.spacing, 2.0)
    box, blob = _ellipsoid_local(g.shape, center, radii * 1.3)
    # Irregular margin: the ellipsoid core plus a noisy rim.
    field = _smooth_field(blob.shape, rng, cells=4)
    mask = np.zeros(g.shape, dtype=bool)
    mask[box] = blob & (field > 0.45)
    core_box, core = _ellipsoid_local(g.shape, center, radii * 0.7)
    mask[core_box] |= core
    mask &= region
    return mask, f"Consolidation in the {side} lower lobe"


def _draw_ground_glass(g, lungs, rng):
    field = _smooth_field(g.shape, rng, cells=5)
    upper = _lobe(g, lungs["right"], True) | _lobe(g, lungs["left"], True)
    mask = upper & (field > rng.uniform(0.3, 0.4))
    return mask, "Diffuse ground-glass opacities in both upper lobes"


def _draw_micronodules(g, lungs, rng):
    side = rng.choice(["right", "left"])
    region = _lobe(g, lungs[side], upper=False)
    candidates = np.argwhere(region)
    mask = np.zeros(g.shape, dtype=bool)
    for _ in range(int(rng.integers(20, 40))):
        center = candidates[rng.integers(len(candidates))].astype(float)
        radii = np.maximum(rng.uniform(1.0, 2.0) / g.spacing, 0.75)
        box, local = _ellipsoid_local(g.shape, center, radii)
        mask[box] |= local
    return mask & region, f"Centrilobular micronodules in the {side} lower lobe"


_DRAW = {"nodule": _draw_nodule, "effusion": _draw_effusion,
         "consolidation": _draw_consolidation, "ground_glass": _draw_ground_glass,
         "micronodules": _draw_micronodules}


def make_phantom(shape: Sequence[int] = (64, 64, 32),
                 findings: Sequence[str] = DEFAULT_FINDINGS, seed: int = 0,
                 affine: np.ndarray | None = None, noise_hu: float = 10.0,
                 ) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """One phantom → ``(volume_hu float32 (X, Y, Z), affine, findings)``.

    ``findings`` lists kinds (``FINDING_KINDS``, each at most once); each returned
    finding is ``{"kind", "text", "category", "mask" (uint8, same shape)}`` in the
    order asked. ``affine`` only sets voxel sizes/placement (default
    :func:`default_affine`); the anatomy is laid out in voxel space.
    """
    unknown = set(findings) - set(FINDING_KINDS)
    if unknown or len(set(findings)) != len(findings):
        raise ValueError(f"findings must be distinct kinds from {FINDING_KINDS}: {findings}")
    shape = tuple(int(s) for s in shape)
    affine = default_affine(shape) if affine is None else np.asarray(affine, dtype=np.float64)
    rng = np.random.default_rng(seed)
    g = _Grid(shape, affine)
    vol, parts = _anatomy(g, rng)
    lungs = {k: parts[k] for k in ("right", "left")}
    drawn: dict[str, tuple[np.ndarray, str]] = {}
    for kind in PAINT_ORDER:
        if kind in findings:
            mask, text = _DRAW[kind](g, lungs, rng)
            for earlier in drawn.values():
                earlier[0][mask] = False  # overwritten voxels belong to the later finding
            vol[mask] = FINDING_HU[kind]
            drawn[kind] = (mask, text)
    if noise_hu:
        vol += rng.standard_normal(shape, dtype=np.float32) * np.float32(noise_hu)
    out = []
    for kind in findings:
        mask, text = drawn[kind]
        if not mask.any():
            raise RuntimeError(f"phantom finding {kind!r} has an empty mask for shape {shape}")
        out.append({"kind": kind, "text": text, "category": CATEGORY[kind],
                    "mask": mask.astype(np.uint8)})
    return vol, affine, out


def _save(array: np.ndarray, affine: np.ndarray, path: Path, storage: str,
          slope: float, intercept: float) -> tuple[float | None, float | None]:
    """Write one volume; returns the (slope, intercept) a reader must still apply."""
    if storage == "float":
        nib.save(nib.Nifti1Image(array.astype(np.float32), affine), path)
        return None, None
    raw = np.round((array - intercept) / slope)
    raw = np.clip(raw, np.iinfo(np.int16).min, np.iinfo(np.int16).max).astype(np.int16)
    img = nib.Nifti1Image(raw, affine, dtype=np.int16)
    if storage == "scaled_int16":
        img.header.set_slope_inter(slope, intercept)  # nibabel applies it on read
        nib.save(img, path)
        return None, None
    if storage == "raw_int16":
        # CT-RATE style: raw values in the file, slope/intercept only in the manifest.
        nib.save(img, path)
        return slope, intercept
    raise ValueError(f"storage must be float, scaled_int16 or raw_int16, not {storage!r}")


def write_phantom_set(out_dir: str | os.PathLike, n: int, shape: Sequence[int] = (64, 64, 32),
                      seed: int = 0, findings: Sequence[str] = FINDING_KINDS,
                      storage: str = "float", slope: float = 1.0,
                      intercept: float = -1024.0) -> pd.DataFrame:
    """Write ``n`` phantoms, one mask per finding, and ``manifest.csv``.

    Layout: ``volumes/phantom_XXX.nii.gz``, ``masks/phantom_XXX_<kind>.nii.gz``.
    ``storage``: ``float`` (HU as float32), ``scaled_int16`` (int16 with
    scl_slope/scl_inter in the header) or ``raw_int16`` (int16 raw values with the
    slope/intercept in the manifest's ``slope``/``intercept`` columns, to be applied
    by ``preprocess.ToHUd``). Returns the manifest (``MANIFEST_COLUMNS``).
    """
    out = Path(out_dir)
    (out / "volumes").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        vid = f"phantom_{i:03d}"
        vol, affine, items = make_phantom(shape, findings, seed=int(
            np.random.default_rng([seed, i]).integers(2**31)))
        vpath = out / "volumes" / f"{vid}.nii.gz"
        s, b = _save(vol, affine, vpath, storage, slope, intercept)
        for item in items:
            mpath = out / "masks" / f"{vid}_{item['kind']}.nii.gz"
            nib.save(nib.Nifti1Image(item["mask"], affine, dtype=np.uint8), mpath)
            rows.append({"volume_id": vid, "volume_uri": str(vpath),
                         "finding_id": f"{vid}_{item['kind']}", "finding_text": item["text"],
                         "category": item["category"], "kind": item["kind"],
                         "mask_uri": str(mpath), "gt_voxels": int(item["mask"].sum()),
                         "slope": s, "intercept": b})
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    manifest.to_csv(out / "manifest.csv", index=False)
    return manifest
