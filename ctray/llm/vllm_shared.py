"""One resident vLLM engine actor per Ray session (``engine_mode: shared``): every LLM
stage's workers call it, so a multi-pass job on one machine starts the engine once."""

from __future__ import annotations

import logging
from typing import Any

from ctray.llm.base import LLMBackend, LLMRequest, LLMResponse
from ctray.llm.vllm_engine import (check_vllm_importable, engine_args, engine_env, model_path,
                                   resolved_device)
from ctray.llm.vllm_inprocess import VLLMBackend

log = logging.getLogger(__name__)


class VLLMEngineActor:
    """A resident engine that every LLM stage of a Ray session can call."""

    def __init__(self, cfg, device: str):
        self.backend = VLLMBackend(cfg, device)

    def generate(self, requests: list[LLMRequest]) -> list[LLMResponse]:
        """Answer a batch with the resident engine."""
        return self.backend.generate(requests)

    def describe(self) -> dict[str, Any]:
        """The resident engine's description (waiting on it waits for the start)."""
        return self.backend.describe()

    def close(self) -> None:
        """Stop the engine (before the actor is killed)."""
        self.backend.close()


#: one namespace for the engines: jobs, stage workers and Serve replicas (which run in
#: Serve's own namespace) find the same engine by name
ENGINE_NAMESPACE = "ctray-engines"
#: handles of the engines this process started, by name
_KEEP_ALIVE: dict[str, Any] = {}


def shared_engine_name(cfg, device: str) -> str:
    """Stages with the same engine settings share an engine (sampling is per request)."""
    import hashlib
    import json

    key = json.dumps({"model": cfg.model, "gguf": cfg.gguf_file, "revision": cfg.revision,
                      "args": engine_args(cfg, device), "env": engine_env(cfg, device)},
                     sort_keys=True, default=str)
    return "ctray-vllm-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def shared_engine(cfg, create: bool = False):
    """The named engine actor; ``create`` (on the driver, so the actor lives as long
    as the driver and not as long as one stage's worker) starts it when missing."""
    import ray

    device = resolved_device(cfg)
    name = shared_engine_name(cfg, device)
    if not create:
        return ray.get_actor(name, namespace=ENGINE_NAMESPACE)
    check_vllm_importable()
    model_path(cfg, device)  # convert a GGUF once, here, before the engine needs it
    options: dict[str, Any] = {"name": name, "namespace": ENGINE_NAMESPACE, "get_if_exists": True,
                               "runtime_env": {"env_vars": engine_env(cfg, device)},
                               # vLLM runs its own processes; the actor only holds them.
                               "num_cpus": 0}
    if device == "gpu":
        options["num_gpus"] = cfg.tensor_parallel_size * cfg.pipeline_parallel_size
    actor = ray.remote(VLLMEngineActor).options(**options).remote(cfg, device)
    ray.get(actor.describe.remote())  # wait for the engine: start-up errors surface here
    # A non-detached actor dies when its owner's handle goes (handles from get_actor /
    # get_if_exists do not count): the creating process keeps the first one, so the
    # engine serves every later stage and pass of this driver. Never replace it.
    _KEEP_ALIVE.setdefault(name, actor)
    return actor


def stop_shared_engines() -> None:
    """Kill the engines this process started (they also end with the driver)."""
    import ray

    while _KEEP_ALIVE:
        _, actor = _KEEP_ALIVE.popitem()
        try:
            ray.get(actor.close.remote(), timeout=60)
        except Exception as exc:  # noqa: BLE001 - the kill below ends it either way
            log.debug("shared engine: close: %s", exc)
        ray.kill(actor)


class SharedEngineClient(LLMBackend):
    """In a stage worker: forwards a batch to the shared engine actor."""

    kind = "vllm"
    supports_guided_choice = True
    supports_json_schema = True

    def __init__(self, cfg):
        self.actor = shared_engine(cfg)

    def generate(self, requests: list[LLMRequest]) -> list[LLMResponse]:
        """Answer a batch on the shared engine actor."""
        import ray

        return ray.get(self.actor.generate.remote(requests))

    def describe(self) -> dict[str, Any]:
        """The shared engine's description."""
        import ray

        return ray.get(self.actor.describe.remote())


def make_vllm_backend(cfg) -> LLMBackend:
    """The in-process backend for ``cfg``: a client of the shared engine when one is
    configured (and running), else an engine in this process."""
    if cfg.engine_mode == "shared":
        import ray

        if ray.is_initialized():
            try:
                return SharedEngineClient(cfg)
            except ValueError:  # not started by a driver: start it from here
                shared_engine(cfg, create=True)
                return SharedEngineClient(cfg)
    return VLLMBackend(cfg)
