"""Ray Serve deployments that answer with an LLM: report translation and LLM labeling.

They reuse the batch jobs' task classes (``build_request`` / ``parse`` /
``repair_request``) through :class:`~ctray.llm.task.LLMStage`, so a served answer
is produced by exactly the prompts and parsing of a corpus run. The backend is
built in-process from a :class:`~ctray.llm.config.BackendConfig`: ``vllm`` (a vLLM
engine inside the replica, CPU or GPU, with guided decoding), ``hf`` (local
transformers) or ``openai`` (any OpenAI-compatible server).
"""

# No ``from __future__ import annotations``: FastAPI reads the route methods'
# annotations as classes once Serve has rewritten their signatures.

import asyncio
import time
from typing import Any

import pandas as pd
from fastapi import FastAPI, HTTPException, Request
from ray import serve

import ctray
from ctray.llm.base import LLMRequest
from ctray.llm.config import BackendConfig
from ctray.llm.task import COMPLETION_TOKENS_COL, PROMPT_TOKENS_COL, LLMStage, LLMTask
from ctray.pipeline.stage import ERROR_COL
from ctray.serving.auth import AUTH
from ctray.serving.offline_docs import use_offline_docs
from ctray.serving.batching import MAX_ERROR_CHARS, Outcome, run_isolated
from ctray.serving.schemas import (BatchStats, Health, ItemError, LabelRequest, LeavsOrgan,
                                   LeavsRequest, LeavsResponse, LLMFindingsItem,
                                   LLMFindingsResponse, TranslateRequest, TranslateResponse,
                                   TranslationItem, VersionInfo)
from ctray.serving.service import (BatchingConfig, Limits, Service, const,
                                   empty_text_error, is_blank, log)
from ctray.tasks.findings.schema import COLUMN_TO_NAME, FINDING_COLUMNS
from ctray.tasks.translate.prompts import TranslationPromptConfig
from ctray.tasks.translate.task import SECTION_COL, SOURCE_COL, TRANSLATION_COL, TranslateTask


class LLMUserConfig(BatchingConfig):
    """``user_config`` of the LLM deployments (batching and limits)."""


def item_error(message: str) -> ItemError:
    code = "backend_error" if "backend error" in message else "parse_error"
    return ItemError(code=code, message=message[:MAX_ERROR_CHARS])


class LLMService(Service):
    """Runs rows through an :class:`LLMStage`; subclasses build rows and responses."""

    def _init_llm(self, task: LLMTask, backend: BackendConfig) -> None:
        self._init_service()
        self.backend_config = backend
        self.stage = LLMStage(task, backend)
        self.stage.preflight()
        self.stage.setup()

    def reconfigure(self, user_config: dict) -> None:
        cfg = LLMUserConfig.model_validate(user_config or {})
        self.run_batch.set_max_batch_size(cfg.max_batch_size)
        self.run_batch.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)
        self.limits = Limits(max_chars=cfg.max_chars, max_items=cfg.max_items)
        self.batching = cfg

    def check_health(self) -> None:
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
        outcomes = await asyncio.to_thread(run_isolated, self._process, rows)
        self.counter.record_batch(outcomes)
        return outcomes

    async def run_rows(self, rows: list[dict[str, Any] | None]) -> list[Outcome]:
        """``None`` rows (blank input) get an ``empty_text`` error without a model call."""
        return list(await asyncio.gather(*[
            const(Outcome(error=empty_text_error())) if row is None else self.run_batch(row)
            for row in rows]))

    async def health(self) -> Health:
        started = time.perf_counter()

        def probe() -> bool:
            with self.model_lock:
                response = self.stage.backend.generate(
                    [LLMRequest([{"role": "user", "content": "Reply with OK."}], max_tokens=2)])
            return response[0].ok

        try:
            ok = await asyncio.to_thread(probe)
        except Exception as exc:  # noqa: BLE001 - any failure means unhealthy
            log.warning("%s healthz failed: %s", self.app_label, type(exc).__name__)
            ok = False
        if not ok:
            raise HTTPException(503, detail="LLM backend check failed")
        return Health(status="ok", latency_ms=(time.perf_counter() - started) * 1000)

    async def label_texts(self, body, request: Request) -> dict[str, Any]:
        """The ``/label`` flow of the report labelers: limits, counts, one row per text
        (blank texts answered without a model call), logging without text; the fields
        every labeler's response shares, its items made by its ``_item``."""
        started = time.perf_counter()
        self.check_limits(body.texts)
        self.counter.record_request(len(body.texts))
        rows = [None if is_blank(text) else {"report_id": body.item_id(i), "text": text}
                for i, text in enumerate(body.texts)]
        outcomes = await self.run_rows(rows)
        self.counter.record_errors(sum(r is None for r in rows))
        self.log_request(request, body.texts, started, outcomes)
        return {"model": self.model_label(), "prompt_version": self.stage.task.prompt_version(),
                "results": [self._item(body.item_id(i), o) for i, o in enumerate(outcomes)]}

    def model_label(self) -> str:
        return self.backend_config.model_label()

    def llm_version(self) -> VersionInfo:
        return self.version_info(self.model_label(),
                                 prompt_version=self.stage.task.prompt_version() or None,
                                 batching=getattr(self, "batching", None))


translate_api = FastAPI(title="ctray report translation", version=ctray.__version__,
                        description="Translates the sections of one radiology report with an "
                                    "LLM (the prompts of the translate job). Text is never logged.")
use_offline_docs(translate_api)  # /docs without a CDN


@serve.deployment(max_ongoing_requests=16, max_queued_requests=128,
                  ray_actor_options={"num_cpus": 1})
@serve.ingress(translate_api)
class TranslatorService(LLMService):
    app_label = "translate"

    def __init__(self, prompt: TranslationPromptConfig, backend: BackendConfig,
                 max_tokens: int = 1024, repair: bool = True) -> None:
        self.prompt = prompt
        self._init_llm(TranslateTask(prompt, max_tokens=max_tokens, repair=repair), backend)

    @translate_api.post("/report", response_model=TranslateResponse, dependencies=AUTH)
    async def translate(self, body: TranslateRequest, request: Request) -> TranslateResponse:
        started = time.perf_counter()
        names, texts = list(body.sections), list(body.sections.values())
        self.check_limits(texts, field="sections", keys=names)
        self.counter.record_request(len(texts))
        rows = [None if is_blank(text) else
                {"report_id": body.id or "request", SECTION_COL: name, SOURCE_COL: text}
                for name, text in zip(names, texts)]
        outcomes = await self.run_rows(rows)
        self.counter.record_errors(sum(r is None for r in rows))
        self.log_request(request, texts, started, outcomes)
        sections = {
            name: TranslationItem(error=o.error, batch_size=o.batch_size) if o.error else
            TranslationItem(translation=o.value[TRANSLATION_COL], batch_size=o.batch_size)
            for name, o in zip(names, outcomes)}
        return TranslateResponse(model=self.model_label(), id=body.id,
                                 prompt_version=self.stage.task.prompt_version(),
                                 source_lang=self.prompt.source_lang,
                                 target_lang=self.prompt.target_lang, sections=sections)

    @translate_api.get("/healthz", response_model=Health)
    async def healthz(self) -> Health:
        return await self.health()

    @translate_api.get("/version", response_model=VersionInfo, dependencies=AUTH)
    async def version(self) -> VersionInfo:
        return self.llm_version()

    @translate_api.get("/stats", response_model=BatchStats, dependencies=AUTH)
    async def stats(self) -> BatchStats:
        return self.counter.snapshot(self.replica_name)


llm_findings_api = FastAPI(title="ctray LLM findings labeler", version=ctray.__version__,
                           description="Labels the 18 CT-RATE findings with an LLM answering "
                                       "one JSON object per report (the prompts of the LLM "
                                       "labeling job). Report text is never logged.")
use_offline_docs(llm_findings_api)  # /docs without a CDN


@serve.deployment(max_ongoing_requests=16, max_queued_requests=128,
                  ray_actor_options={"num_cpus": 1})
@serve.ingress(llm_findings_api)
class LLMFindingsLabeler(LLMService):
    app_label = "llm-findings"

    def __init__(self, backend: BackendConfig, task_options: dict[str, Any] | None = None) -> None:
        from ctray.tasks.findings.llm_labeler import FindingsLLMTask

        self._init_llm(FindingsLLMTask(**(task_options or {})), backend)

    def _item(self, item_id: str, outcome: Outcome) -> LLMFindingsItem:
        if outcome.error is not None:
            return LLMFindingsItem(id=item_id, error=outcome.error, batch_size=outcome.batch_size)
        row = outcome.value
        labels = {c: int(row[c]) for c in FINDING_COLUMNS}
        return LLMFindingsItem(id=item_id, batch_size=outcome.batch_size, labels=labels,
                               positive=[COLUMN_TO_NAME[c] for c in FINDING_COLUMNS if labels[c]],
                               prompt_tokens=int(row.get(PROMPT_TOKENS_COL) or 0),
                               completion_tokens=int(row.get(COMPLETION_TOKENS_COL) or 0))

    @llm_findings_api.post("/label", response_model=LLMFindingsResponse, dependencies=AUTH)
    async def label(self, body: LabelRequest, request: Request) -> LLMFindingsResponse:
        return LLMFindingsResponse(**await self.label_texts(body, request))

    @llm_findings_api.get("/healthz", response_model=Health)
    async def healthz(self) -> Health:
        return await self.health()

    @llm_findings_api.get("/version", response_model=VersionInfo, dependencies=AUTH)
    async def version(self) -> VersionInfo:
        return self.llm_version()

    @llm_findings_api.get("/stats", response_model=BatchStats, dependencies=AUTH)
    async def stats(self) -> BatchStats:
        return self.counter.snapshot(self.replica_name)


leavs_api = FastAPI(title="ctray LEAVS report labeler", version=ctray.__version__,
                    description="LEAVS labels (finding types, certainty, urgency per organ) "
                                "for one abdominal CT report: every stage of the leavs job, "
                                "in the replica. Report text is never logged.")
use_offline_docs(leavs_api)  # /docs without a CDN


@serve.deployment(max_ongoing_requests=4, max_queued_requests=32,
                  ray_actor_options={"num_cpus": 1})
@serve.ingress(leavs_api)
class LeavsReportService(Service):
    """LEAVS for one report per request, on one backend held by the replica (a vLLM
    engine by default): the job's questions, fan-out and assembly, in-process."""

    app_label = "leavs"

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        from ctray.tasks.leavs.leavs_job import LeavsConfig

        self._init_service()
        self.cfg = LeavsConfig.model_validate({"job": "leavs", **(config or {})})
        self.cfg.backend.preflight()
        self.backend = self.cfg.backend.make_backend()

    def __del__(self) -> None:  # graceful replica stop: the engine goes with it
        if getattr(self, "backend", None) is not None:
            self.backend.close()

    def _label(self, report_id: str, text: str) -> LeavsResponse:
        from ctray.tasks.leavs import schema
        from ctray.tasks.leavs.one_report import label_reports

        with self.model_lock:
            labels, failed = label_reports(self.cfg, [{"report_id": report_id, "text": text}],
                                           self.backend)
        types = list(schema.FINDING_TYPES)
        organs = [LeavsOrgan(organ=r["organ"], labels={t: int(r[t]) for t in types},
                             urgency={t: int(r[f"urgency_{t}"]) for t in types})
                  for r in labels.to_dict("records")]
        errors = [] if failed.empty else [
            ItemError(code="parse_error" if "parse" in str(e) else "backend_error",
                      message=str(e)[:MAX_ERROR_CHARS]) for e in failed[ERROR_COL]]
        return LeavsResponse(model=self.cfg.backend.model_label(), id=report_id,
                             organs=organs, errors=errors)

    @leavs_api.post("/report", response_model=LeavsResponse, dependencies=AUTH)
    async def report(self, body: LeavsRequest, request: Request) -> LeavsResponse:
        started = time.perf_counter()
        self.check_limits([body.text], field="text")
        if is_blank(body.text):
            raise HTTPException(422, detail="text is empty")
        self.counter.record_request(1)
        out = await asyncio.to_thread(self._label, body.id or "request", body.text)
        log.info("leavs request_id=%s chars=%d organs=%d errors=%d ms=%.1f",
                 request.headers.get("x-request-id"), len(body.text), len(out.organs),
                 len(out.errors), (time.perf_counter() - started) * 1000)
        return out

    @leavs_api.get("/version", response_model=VersionInfo, dependencies=AUTH)
    async def version(self) -> VersionInfo:
        return self.version_info(self.cfg.backend.model_label())
