"""NIfTI volumes on local disk or any fsspec URI (``s3://``, ``gs://``, ``memory://``).

``load_volume`` returns the voxel array exactly as nibabel's voxel axes order it
(no reorientation): for the usual axial CT stored with a near-diagonal affine,
axes are (x, y, z) and **depth (slices) is the last axis**. Header scaling
(``scl_slope``/``scl_inter``) is applied by nibabel, so a file stored as scaled
int16 comes back in HU; scaling that lives outside the header (CT-RATE's metadata
CSV) is applied later by :class:`ctray.tasks.grounding.preprocess.ToHUd`.

Remote files are copied to a temporary local file first because nibabel needs
a seekable file with the right suffix to recognise gzip.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

NIFTI_SUFFIXES = (".nii.gz", ".nii")


class VolumeReadError(OSError):
    """A volume could not be read; names the file and the underlying reason."""

    def __init__(self, uri: str, reason: str):
        self.uri = uri
        self.reason = reason
        super().__init__(f"cannot read volume {uri}: {reason}")


def is_remote(uri: str) -> bool:
    return "://" in str(uri) and not str(uri).startswith("file://")


def _strip_file_scheme(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def volume_id_from_uri(uri: str) -> str:
    name = str(uri).rstrip("/").rsplit("/", 1)[-1]
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _suffix(uri: str) -> str:
    return ".nii.gz" if str(uri).endswith(".nii.gz") else ".nii"


def list_volumes(root: str | os.PathLike) -> list[dict[str, str]]:
    """All ``.nii``/``.nii.gz`` files under ``root`` (a file, folder or URI), sorted by URI.

    Returns ``[{"volume_id", "uri"}]``; remote URIs keep their scheme so they can be
    passed straight back to :func:`load_volume`.
    """
    root = str(root)
    if is_remote(root):
        import fsspec

        fs, path = fsspec.core.url_to_fs(root)
        if fs.isfile(path):
            found = [path]
        else:
            found = [p for p in fs.find(path) if p.endswith(NIFTI_SUFFIXES)]
        uris = sorted(fs.unstrip_protocol(p) for p in found)
    else:
        base = Path(_strip_file_scheme(root))
        if base.is_file():
            uris = [str(base)]
        elif base.is_dir():
            uris = sorted(str(p) for p in base.rglob("*")
                          if p.is_file() and p.name.endswith(NIFTI_SUFFIXES))
        else:
            raise FileNotFoundError(f"no such volume file or folder: {root}")
    return [{"volume_id": volume_id_from_uri(u), "uri": u} for u in uris]


def _read_local(path: str, uri: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    try:
        img = nib.load(path)
        # get_fdata forces the full read, so truncated gzip streams fail here, not later.
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as exc:  # nibabel raises many types (EOFError, zlib.error, ImageFileError...)
        raise VolumeReadError(uri, f"{type(exc).__name__}: {exc}") from exc
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise VolumeReadError(uri, f"expected a 3D volume, got shape {data.shape}")
    if not np.isfinite(data).all():
        raise VolumeReadError(uri, "volume contains NaN or infinite values")
    header = img.header.copy()
    info = {
        "uri": uri,
        "volume_id": volume_id_from_uri(uri),
        "shape": tuple(int(s) for s in data.shape),
        "zooms": tuple(float(z) for z in header.get_zooms()[:3]),
        "axcodes": "".join(nib.aff2axcodes(img.affine)),
        "stored_dtype": str(img.get_data_dtype()),
        # nibabel moves scl_slope/scl_inter from the header into the array proxy on load.
        "scl_slope": _float_or_none(getattr(img.dataobj, "slope", None)),
        "scl_inter": _float_or_none(getattr(img.dataobj, "inter", None)),
        "header": header,
    }
    return data, np.asarray(img.affine, dtype=np.float64), info


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def load_volume(uri: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read one NIfTI volume → ``(float32 array (x, y, z), 4×4 affine, info)``.

    ``info`` holds shape, voxel sizes, orientation codes (``axcodes``), the stored
    dtype, the header scaling nibabel applied and a copy of the header (pass it to
    :func:`save_mask`). Any failure raises :class:`VolumeReadError` naming ``uri``.
    """
    uri = str(uri)
    if not is_remote(uri):
        path = _strip_file_scheme(uri)
        if not os.path.isfile(path):
            raise VolumeReadError(uri, "file not found")
        return _read_local(path, uri)
    import fsspec

    with tempfile.TemporaryDirectory(prefix="ctray-vol-") as tmp:
        local = os.path.join(tmp, "volume" + _suffix(uri))
        try:
            fs, path = fsspec.core.url_to_fs(uri)
            fs.get_file(path, local)
        except Exception as exc:
            raise VolumeReadError(uri, f"download failed: {type(exc).__name__}: {exc}") from exc
        return _read_local(local, uri)


def save_mask(mask: np.ndarray, affine: np.ndarray, uri: str | os.PathLike,
              header: nib.Nifti1Header | None = None) -> str:
    """Write a uint8 mask as NIfTI with the reference volume's affine and header.

    The reference header (from ``load_volume(...)[2]["header"]``) keeps qform/sform
    codes and voxel sizes, so viewers overlay the mask on the original scan; its
    scaling is reset because a mask must read back as 0/1. ``mask`` must already be
    on the original grid (see ``ctray.tasks.grounding.inference.mask_to_original``).
    """
    uri = str(uri)
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"mask must be 3D, got shape {mask.shape}")
    if header is not None:
        ref_shape = tuple(int(s) for s in header.get_data_shape()[:3])
        if ref_shape != mask.shape:
            raise ValueError(f"mask shape {mask.shape} != reference shape {ref_shape}")
        header = header.copy()
    img = nib.Nifti1Image(mask.astype(np.uint8), np.asarray(affine, dtype=np.float64), header)
    img.set_data_dtype(np.uint8)
    img.header.set_slope_inter(1.0, 0.0)
    if header is not None:
        # Nifti1Image(affine=...) sets the sform; carry the reference qform/sform codes over.
        img.set_qform(header.get_qform(), code=int(header["qform_code"]))
        img.set_sform(np.asarray(affine), code=max(int(header["sform_code"]), 1))
    if not is_remote(uri):
        path = _strip_file_scheme(uri)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        nib.save(img, path)
        return path
    import fsspec

    with tempfile.TemporaryDirectory(prefix="ctray-mask-") as tmp:
        local = os.path.join(tmp, "mask" + _suffix(uri))
        nib.save(img, local)
        fs, path = fsspec.core.url_to_fs(uri)
        fs.put_file(local, path)
    return uri
