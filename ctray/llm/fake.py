"""Deterministic, rule-driven backend for tests. Never use it for real labels."""

from __future__ import annotations

import importlib
import re
from typing import Callable

from ctray.llm.base import LLMBackend, LLMRequest, LLMResponse
from ctray.llm.config import BackendConfig


def _load(spec: str) -> Callable[[LLMRequest], str]:
    module, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"fake_responder must look like 'module:function', got {spec!r}")
    return getattr(importlib.import_module(module), attr)


class FakeBackend(LLMBackend):
    """Deterministic answers from regex rules or a responder function, for tests."""

    kind = "fake"
    supports_guided_choice = True
    supports_json_schema = False

    def __init__(self, rules: list[tuple[str, str]] | None = None, default: str = "",
                 responder: Callable[[LLMRequest], str] | None = None):
        self.rules = [(re.compile(p, re.S), r) for p, r in (rules or [])]
        self.default = default
        self.responder = responder
        self.calls = 0

    @classmethod
    def from_config(cls, cfg: BackendConfig) -> "FakeBackend":
        """The backend of a ``FakeConfig``."""
        responder = _load(cfg.fake_responder) if cfg.fake_responder else None
        return cls([(r.pattern, r.response) for r in cfg.fake_rules], cfg.fake_default, responder)

    def _answer(self, request: LLMRequest) -> str:
        if self.responder is not None:
            return self.responder(request)
        prompt = request.messages[-1]["content"]
        for pattern, response in self.rules:
            if pattern.search(prompt):
                return response
        if self.default or not request.choices:
            return self.default
        return request.choices[0]

    def generate(self, requests: list[LLMRequest]) -> list[LLMResponse]:
        """Answer each request by the first matching rule."""
        out = []
        for req in requests:
            self.calls += 1
            try:
                text = self._answer(req)
            except Exception as exc:  # noqa: BLE001 - responders may simulate failures
                out.append(LLMResponse("", error=f"{type(exc).__name__}: {exc}"))
                continue
            if req.choices and text not in req.choices:
                # Guided choice decoding can only ever emit a listed option.
                text = req.choices[0]
            prompt_tokens = sum(len(m["content"].split()) for m in req.messages)
            out.append(LLMResponse(text, prompt_tokens, len(text.split())))
        return out

    def describe(self) -> dict:
        """Kind and rule count (for manifests)."""
        return {"kind": self.kind, "rules": len(self.rules)}
