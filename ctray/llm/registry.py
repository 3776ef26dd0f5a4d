"""What each backend kind does, registered per config class (ray.data.llm's
``ProcessorBuilder.register`` idiom).

:mod:`ctray.llm.config` holds the configs as plain data; this module maps each config
class to a :class:`BackendKind`: how to build the in-process backend (inside a worker
or replica), how an :class:`~ctray.llm.task.LLMStage` runs on a Ray Dataset (default:
an actor pool of in-process backends), the preflight check on the driver and the
engine facts recorded in manifests. The backend modules import the configs, this
module imports the backend modules (all light: vLLM, transformers and openai import
only when a backend is built), nothing imports back. Adding a backend: its config class
in ``config.py`` (and in ``BACKEND_CONFIGS``), its module, one ``register`` call here.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable

from ctray.llm import fake, hf, openai_backend, vllm_engine, vllm_processor, vllm_shared
from ctray.llm.base import LLMBackend
from ctray.llm.config import (BACKEND_CONFIGS, BaseBackendConfig, FakeConfig, HFConfig,
                              MissingAPIKeyError, OpenAIConfig, VLLMConfig, is_local_url)


def _actor_pool(stage, ds):
    from ctray.pipeline.stage import Stage

    return Stage.apply(stage, ds)


def _no_preflight(cfg) -> None:
    return None


@dataclass(frozen=True)
class BackendKind:
    """The behaviour of one backend kind."""

    #: the in-process :class:`~ctray.llm.base.LLMBackend` for a config (built in a worker)
    make_backend: Callable[[Any], LLMBackend]
    #: which engine answers (manifests, the line each LLM stage prints)
    engine: Callable[[Any], dict[str, Any]]
    #: add an LLMStage to a Ray Dataset
    apply_stage: Callable[[Any, Any], Any] = _actor_pool
    #: fail on the driver, before the job starts, with the fix in the message
    preflight: Callable[[Any], None] = _no_preflight


_KINDS: dict[type[BaseBackendConfig], BackendKind] = {}


def register(config_type: type[BaseBackendConfig], kind: BackendKind) -> None:
    """Register the behaviour of the backend configured by ``config_type``."""
    _KINDS[config_type] = kind


def kind_of(cfg: BaseBackendConfig) -> BackendKind:
    """The registered behaviour of ``cfg``'s kind."""
    try:
        return _KINDS[type(cfg)]
    except KeyError:
        raise TypeError(f"no backend registered for {type(cfg).__name__}") from None


def make_backend(cfg: BaseBackendConfig) -> LLMBackend:
    """The in-process backend for ``cfg``."""
    return kind_of(cfg).make_backend(cfg)


def apply_stage(stage, ds):
    """Add ``stage`` (an LLMStage) to ``ds`` the way its backend runs."""
    return kind_of(stage.backend_config).apply_stage(stage, ds)


def preflight(cfg: BaseBackendConfig) -> None:
    """The driver-side check of ``cfg``'s kind."""
    kind_of(cfg).preflight(cfg)


def engine(cfg: BaseBackendConfig) -> dict[str, Any]:
    """Which engine answers for ``cfg``."""
    return kind_of(cfg).engine(cfg)


def describe(cfg: BaseBackendConfig) -> dict[str, Any]:
    """The manifest's view of a backend: the fields that change results plus the engine."""
    return {**cfg.manifest_fields(), **engine(cfg)}


def _version(dist: str) -> str | None:
    for name in (dist, f"{dist}-cpu"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


# ----------------------------------------------------------------------- the kinds

def _openai_preflight(cfg: OpenAIConfig) -> None:
    import os

    if not os.environ.get(cfg.api_key_env) and not is_local_url(cfg.base_url):
        raise MissingAPIKeyError(
            f"backend openai: environment variable {cfg.api_key_env} is not set "
            f"(the API key is read only from the environment; set it, or point "
            f"backend.api_key_env at the variable that holds it)"
        )


def _vllm_apply_stage(stage, ds):
    if stage.backend_config.engine_mode == "shared":
        # On the driver: the engine lives as long as the job's driver; the stage's
        # workers (the default actor pool) call it.
        vllm_shared.shared_engine(stage.backend_config, create=True)
        return _actor_pool(stage, ds)
    return vllm_processor.apply_vllm_stage(stage, ds)


def _vllm_engine(cfg: VLLMConfig) -> dict[str, Any]:
    device = vllm_engine.resolved_device(cfg)
    choice = vllm_engine.engine_dtype(cfg, device)
    return {"engine": "vllm", "engine_version": _version("vllm"), "device": device,
            "via": "ray.data.llm" if cfg.engine_mode == "processor" else "shared engine actor",
            **(choice.as_dict() if choice is not None else {})}


def _hf_engine(cfg: HFConfig) -> dict[str, Any]:
    info = {"engine": "transformers", "engine_version": _version("transformers"),
            "device": cfg.device}
    if cfg.device == "cpu":
        from ctray.hardware import cpu_dtype

        info.update(cpu_dtype(cfg.dtype).as_dict())
    return info


register(FakeConfig, BackendKind(make_backend=fake.FakeBackend.from_config,
                                 engine=lambda cfg: {"engine": "fake"}))
register(HFConfig, BackendKind(make_backend=hf.HFBackend.from_config, engine=_hf_engine))
register(OpenAIConfig, BackendKind(
    make_backend=openai_backend.OpenAIBackend.from_config, preflight=_openai_preflight,
    engine=lambda cfg: {"engine": "openai-compatible",
                        "endpoint": cfg.base_url or "api.openai.com"}))
register(VLLMConfig, BackendKind(make_backend=vllm_shared.make_vllm_backend,
                                 engine=_vllm_engine, apply_stage=_vllm_apply_stage,
                                 preflight=lambda cfg: vllm_engine.check_vllm_importable()))

assert set(_KINDS) == set(BACKEND_CONFIGS.values()), "every backend kind needs a register()"
