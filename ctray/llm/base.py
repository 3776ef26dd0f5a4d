"""The one interface every LLM backend implements, and the request/response records.

A task never talks to a backend directly: it turns a row into an :class:`LLMRequest`
(``preprocess``) and a response back into typed columns (``postprocess``); the
backend is configuration. The same task therefore runs on vLLM in a GPU cluster,
on an OpenAI-compatible endpoint, on local transformers, or on the fake backend in tests.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any


class LLMError(RuntimeError):
    """A request that the backend could not answer (recorded as a row error)."""


class PromptTooLongError(LLMError):
    """The prompt does not fit the model context; detected before inference."""


@dataclass
class LLMRequest:
    """One chat request: messages, sampling, and optional guided decoding (choices, JSON schema or
    regex)."""

    messages: list[dict[str, str]]
    max_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    # Guided decoding: at most one of these may be set. ``regex`` is enforced by vLLM
    # only (other backends generate freely and the task validates the answer).
    choices: list[str] | None = None
    json_schema: dict[str, Any] | None = None
    stop: list[str] | None = None
    regex: str | None = None

    def __post_init__(self) -> None:
        guided = [x for x in (self.choices, self.json_schema, self.regex) if x is not None]
        if len(guided) > 1:
            raise ValueError("an LLMRequest takes one of choices, json_schema or regex")
        if self.choices is not None and not self.choices:
            raise ValueError("choices must not be empty")

    def to_dict(self) -> dict[str, Any]:
        """The request as plain data."""
        return {
            "messages": self.messages,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "choices": self.choices,
            "json_schema": self.json_schema,
            "stop": self.stop,
            "regex": self.regex,
        }


@dataclass
class LLMResponse:
    """One answer: text, token usage, an error instead of raising, backend facts in ``meta``."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether the backend answered (``error`` is None)."""
        return self.error is None


class LLMBackend(abc.ABC):
    """A loaded model (or client) that answers a list of requests.

    Backends are built inside Ray workers (``setup`` of an actor), once per worker,
    so construction may load weights; nothing heavy happens at import time.
    A backend never raises for a single bad request: it returns an
    :class:`LLMResponse` with ``error`` set so one row cannot fail the batch.
    """

    #: short name recorded in outputs and the manifest
    kind: str = "base"
    #: whether ``choices``/``json_schema`` are enforced by the decoder itself
    supports_guided_choice: bool = False
    supports_json_schema: bool = False

    @abc.abstractmethod
    def generate(self, requests: list[LLMRequest]) -> list[LLMResponse]:
        """Answer every request, in order."""

    def check_fits(self, request: LLMRequest) -> None:
        """Raise :class:`PromptTooLongError` when prompt + max_tokens exceed the context.

        Backends that know their tokenizer override this; it runs before inference
        so an oversize report becomes a row error instead of a crashed batch."""

    def describe(self) -> dict[str, Any]:
        """Model id, revision and settings for the run manifest (never secrets)."""
        return {"kind": self.kind}

    def close(self) -> None:  # pragma: no cover - default no-op
        """Release clients and engines (a no-op by default)."""
        pass


def messages_to_text(messages: list[dict[str, str]]) -> str:
    """Plain-text rendering of chat messages, for backends without a chat template."""
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)
