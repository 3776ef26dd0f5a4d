"""Backend lookup by name. Heavy modules (vllm, transformers) import only when chosen."""

from __future__ import annotations

from ctray.llm.base import LLMBackend
from ctray.llm.config import BackendConfig

KNOWN_BACKENDS = ("fake", "hf", "openai", "vllm")


def make_backend(cfg: BackendConfig) -> LLMBackend:
    if cfg.kind == "fake":
        from ctray.llm.fake import FakeBackend

        return FakeBackend.from_config(cfg)
    if cfg.kind == "hf":
        from ctray.llm.hf import HFBackend

        return HFBackend.from_config(cfg)
    if cfg.kind == "openai":
        from ctray.llm.openai_backend import OpenAIBackend

        return OpenAIBackend.from_config(cfg)
    if cfg.kind == "vllm":
        raise ValueError(
            "the vllm backend runs as a ray.data.llm processor inside LLMStage.apply, "
            "not as an in-process backend"
        )
    raise ValueError(f"unknown LLM backend {cfg.kind!r}; choose one of {KNOWN_BACKENDS}")
