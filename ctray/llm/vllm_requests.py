"""LLM requests in vLLM's terms: the chat-templated prompt as token ids and the sampling
parameters (guided decoding as ``structured_outputs``), the same in every engine mode.

Prompts are rendered with the model's chat template and tokenized here, then given to
the engine as token ids: the template already writes the BOS token, which a text prompt
would get twice.
"""

from __future__ import annotations

import functools
from typing import Any

from ctray.llm.base import LLMRequest


@functools.lru_cache(maxsize=4)
def load_tokenizer(path: str):
    """The model's tokenizer with a chat template (cached per process)."""
    from transformers import AutoTokenizer

    from ctray.llm.model_cache import ensure_chat_template

    tokenizer = AutoTokenizer.from_pretrained(path)
    ensure_chat_template(tokenizer)
    return tokenizer


def prompt_ids(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """The chat-templated prompt as token ids (the template writes BOS itself)."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):  # BatchEncoding in some versions
            ids = ids["input_ids"]
        return [int(i) for i in ids]
    from ctray.llm.base import messages_to_text

    return tokenizer(messages_to_text(messages) + "\n\nassistant:")["input_ids"]


def sampling_fields(request: LLMRequest) -> dict[str, Any]:
    """vLLM ``SamplingParams`` fields for a request; guided decoding as
    ``structured_outputs`` (choice, or a JSON schema given as a string so that
    rows of different tasks share one Arrow type)."""
    import json

    params: dict[str, Any] = {
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "seed": request.seed,
        "stop": list(request.stop) if request.stop else None,
    }
    # No free whitespace inside guided output: the request field says so, but vLLM
    # 0.32's grammar backends read only the engine's setting (STRUCTURED_OUTPUTS).
    # The schema keeps its key order: the grammar engines emit properties in schema
    # order, and sorted keys made a fine-tuned model's trained order ("positive"
    # before "negative") impossible to write.
    if request.choices:
        params["structured_outputs"] = {"choice": list(request.choices),
                                        "disable_any_whitespace": True}
    elif request.json_schema is not None:
        params["structured_outputs"] = {"json": json.dumps(request.json_schema),
                                        "disable_any_whitespace": True}
    elif request.regex is not None:
        params["structured_outputs"] = {"regex": request.regex, "disable_any_whitespace": True}
    return params


def to_sampling_params(fields: dict[str, Any]):
    """vLLM ``SamplingParams`` from :func:`sampling_fields` (imports vLLM)."""
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    fields = dict(fields)
    structured = fields.pop("structured_outputs", None)
    if structured:
        fields["structured_outputs"] = StructuredOutputsParams(
            **{k: v for k, v in structured.items() if v is not None})
    return SamplingParams(**{k: v for k, v in fields.items() if v is not None})
