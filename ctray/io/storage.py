"""Model folders on object stores, as local directories (loaders read local files)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def local_model_dir(path: str, cache_dir: str | None = None) -> str:
    """A local directory for ``path``: local paths as they are, ``s3://`` / ``gs://``
    directories copied once into a cache (Hugging Face loaders read local files)."""
    if "://" not in path:
        return path
    from pyarrow import fs as pafs

    cache = Path(cache_dir or os.environ.get("CTRAY_MODEL_CACHE",
                                              Path(tempfile.gettempdir()) / "ctray-models"))
    target = cache / path.split("://", 1)[1].strip("/").replace("/", "__")
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache))
        pafs.copy_files(path, str(tmp))
        try:
            tmp.rename(target)  # atomic: a half-copied model is never loaded
        except OSError:  # another worker on this node finished first
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target)
