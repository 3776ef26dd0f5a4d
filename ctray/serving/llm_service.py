"""The base of the Serve apps that answer with an LLM (translation, LLM labelers).

They reuse the batch jobs' task classes (``build_request`` / ``parse`` /
``repair_request``) through :class:`~ctray.llm.task.LLMStage`, so a served answer
is produced by exactly the prompts and parsing of a corpus run. The backend is
built in-process from a backend config (:mod:`ctray.llm.registry`): ``vllm`` (a vLLM
engine inside the replica, CPU or GPU, with guided decoding), ``hf`` (local
transformers) or ``openai`` (any OpenAI-compatible server).
"""

# No ``from __future__ import annotations``: FastAPI reads the route methods'
# annotations as classes once Serve has rewritten their signatures.

import asyncio
from typing import Any

import pandas as pd
from pydantic import ConfigDict, Field
from ray import serve

from ctray.llm.base import LLMRequest
from ctray.llm.config import BackendConfig, FakeConfig
from ctray.llm.task import LLMStage, LLMTask
from ctray.pipeline.stage import ERROR_COL
from ctray.serving.batching import MAX_ERROR_CHARS, Outcome, run_isolated
from ctray.serving.schemas import ItemError
from ctray.serving.service import BatchingConfig, Limits, Service


class LLMUserConfig(BatchingConfig):
    """``user_config`` of the LLM deployments (batching and limits)."""


class LLMAppArgs(LLMUserConfig):
    """Arguments of an LLM app builder: its ``user_config`` plus the backend."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    backend: BackendConfig = Field(
        default_factory=FakeConfig, description="the LLM backend the replicas hold (kind, "
        "model, sampling)")


def item_error(message: str) -> ItemError:
    """A failed row's error as an item error (backend or parse error)."""
    code = "backend_error" if "backend error" in message else "parse_error"
    return ItemError(code=code, message=message[:MAX_ERROR_CHARS])


class LLMService(Service):
    """Runs rows through an :class:`LLMStage`; subclasses build rows and responses."""

    health_failure = "LLM backend check failed"

    def _init_llm(self, task: LLMTask, backend: BackendConfig) -> None:
        self._init_service()
        self.backend_config = backend
        self.stage = LLMStage(task, backend)
        self.stage.preflight()
        self.stage.setup()

    def reconfigure(self, user_config: dict) -> None:
        """Apply batching and limits without a restart."""
        cfg = LLMUserConfig.model_validate(user_config or {})
        self.run_batch.set_max_batch_size(cfg.max_batch_size)
        self.run_batch.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)
        self.limits = Limits(max_chars=cfg.max_chars, max_items=cfg.max_items)
        self.batching = cfg

    def check_health(self) -> None:
        """Serve's replica health check: the backend is loaded."""
        if self.stage.backend is None:
            raise RuntimeError("backend not loaded")

    def __del__(self) -> None:
        # Serve calls __del__ when it stops a replica gracefully: the engine stops
        # with it instead of printing tracebacks when its process is killed.
        backend = getattr(getattr(self, "stage", None), "backend", None)
        if backend is not None:
            backend.close()

    def _process(self, rows: list[dict[str, Any]]) -> list[dict[str, Any] | ItemError]:
        with self.model_lock:
            out = self.stage.process_batch(pd.DataFrame(rows))
        results: list[dict[str, Any] | ItemError] = []
        for rec in out.to_dict("records"):
            error = rec.get(ERROR_COL)
            results.append(item_error(error) if isinstance(error, str) and error else rec)
        return results

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def run_batch(self, rows: list[dict[str, Any]]) -> list[Outcome]:
        """One server-side batch of rows through the stage (items fail alone)."""
        outcomes = await asyncio.to_thread(run_isolated, self._process, rows)
        self.counter.record_batch(outcomes)
        return outcomes

    async def run_rows(self, rows: list[dict[str, Any]]) -> list[Outcome]:
        """Each row through the batched stage."""
        return list(await asyncio.gather(*[self.run_batch(row) for row in rows]))

    def probe(self) -> bool:
        """The backend answers a two-token request."""
        with self.model_lock:
            response = self.stage.backend.generate(
                [LLMRequest([{"role": "user", "content": "Reply with OK."}], max_tokens=2)])
        return response[0].ok

    async def label_texts(self, body, request) -> dict[str, Any]:
        """The ``/label`` flow of the report labelers: one row per text; the fields
        every labeler's response shares, its items made by its ``_item``."""
        ids = [body.item_id(i) for i in range(len(body.texts))]

        async def run(positions: list[int], texts: list[str]) -> list[Outcome]:
            return await self.run_rows([{"report_id": ids[i], "text": text}
                                        for i, text in zip(positions, texts)])

        outcomes = await self.run_texts(body.texts, request, run, batched=True)
        return {"model": self.model_name(), "prompt_version": self.stage.task.prompt_version(),
                "results": [self._item(ids[i], o) for i, o in enumerate(outcomes)]}

    def model_name(self) -> str:
        """``kind:model`` of the backend."""
        return self.backend_config.model_label()

    def version_extra(self) -> dict[str, Any]:
        """The prompt version and the batching settings."""
        return {"prompt_version": self.stage.task.prompt_version() or None,
                "batching": getattr(self, "batching", None)}
