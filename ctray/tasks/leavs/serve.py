"""Serve app of LEAVS (``serve/leavs.yaml``): every stage of the leavs job for one
abdominal CT report per request, on one backend held by the replica (a vLLM engine by
default)."""

# No ``from __future__ import annotations``: FastAPI and Serve read the annotations.

import asyncio
import time
from typing import Any

from fastapi import HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application

from ctray.llm import registry
from ctray.llm.base import LLMRequest
from ctray.pipeline.stage import ERROR_COL
from ctray.serving.batching import MAX_ERROR_CHARS
from ctray.serving.schemas import ItemError, LeavsOrgan, LeavsRequest, LeavsResponse
from ctray.serving.service import Service, coerce, ingress, is_blank, log, service_api


@serve.deployment(max_ongoing_requests=4, max_queued_requests=32,
                  ray_actor_options={"num_cpus": 1})
@ingress(service_api("ctray LEAVS report labeler",
                     "LEAVS labels (finding types, certainty, urgency per organ) for one "
                     "abdominal CT report: every stage of the leavs job, in the replica. "
                     "Report text is never logged."),
         LeavsRequest, LeavsResponse, path="/report")
class LeavsReportService(Service):
    """LEAVS for one report per request: the job's questions, fan-out and assembly,
    in-process."""

    app_label = "leavs"
    health_failure = "LLM backend check failed"

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        from ctray.tasks.leavs.leavs_job import LeavsConfig

        self._init_service()
        self.cfg = LeavsConfig.model_validate({"job": "label-leavs", **(config or {})})
        registry.preflight(self.cfg.backend)
        self.backend = registry.make_backend(self.cfg.backend)

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
        return LeavsResponse(model=self.model_name(), id=report_id, organs=organs,
                             errors=errors)

    async def label(self, body: LeavsRequest, request: Request) -> LeavsResponse:
        """``POST /report``: labels per organ; questions that failed as errors."""
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

    def model_name(self) -> str:
        """``kind:model`` of the backend."""
        return self.cfg.backend.model_label()

    def probe(self) -> bool:
        """The backend answers a two-token request."""
        with self.model_lock:
            response = self.backend.generate(
                [LLMRequest([{"role": "user", "content": "Reply with OK."}], max_tokens=2)])
        return response[0].ok


class LeavsAppArgs(BaseModel):
    """The leavs job's config fields the replica runs with."""

    model_config = ConfigDict(extra="forbid")

    config: dict[str, Any] = Field(
        default_factory=dict, description="fields of the leavs job config (organs, fast, no_cot, "
        "cot_max_tokens, repair, backend); the rest keep the job's defaults")


def leavs_app(args: LeavsAppArgs, **options: Any) -> Application:
    """The LEAVS app; ``options`` are Serve deployment options."""
    args = coerce(LeavsAppArgs, args)
    return LeavsReportService.options(**options).bind(args.config)


def build_leavs_app(args: LeavsAppArgs) -> Application:
    """``import_path`` of serve/leavs.yaml."""
    return leavs_app(args)
