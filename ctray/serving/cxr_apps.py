"""Ray Serve apps for the chest X-ray labelers (14 CheXpert observations x 4 classes).

Same HTTP contract, limits, auth and logging as the other labeling apps
(``docs/serving.md``): ``POST /label`` with ``{"texts": [...], "ids": [...]?}``,
per-item errors, 413 over ``max_chars`` / ``max_items``, bearer token from
``CTRAY_SERVE_TOKEN``, ``/healthz``, ``/version``, ``/stats``; report text is never
logged. Two deployments:

- ``CxrRulesService``: ``CxrRuleLabeler`` (with ``include_evidence``).
- ``CxrLLMLabeler``: ``CxrLLMTask`` through an LLM backend, with server-side batching.
  A model fine-tuned by ``train-llm-labeler`` is served by a vLLM OpenAI-compatible
  server (``vllm serve runs/train_llm_labeler/model``) with ``backend.kind: openai``
  and ``answer_format: sft`` (its training prompt); ``kind: hf`` runs it in-process.

Labels are floats: 1.0 positive, 0.0 negative, -1.0 uncertain, null blank.
"""

# No ``from __future__ import annotations``: FastAPI and Serve read the annotations.

import asyncio
import math
import time
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application

import ctray
from ctray.llm.config import BackendConfig
from ctray.llm.task import COMPLETION_TOKENS_COL, PROMPT_TOKENS_COL
from ctray.serving.auth import AUTH
from ctray.serving.batching import Outcome, run_isolated
from ctray.serving.llm_deployments import LLMService, LLMUserConfig
from ctray.serving.schemas import BatchStats, Health, ItemResult, LabelRequest, LabelResponse, VersionInfo
from ctray.serving.service import Limits, Service, empty_text_error, is_blank
from ctray.tasks.cxr.schema import OBSERVATIONS

DOCS = ("Labels chest X-ray reports with the 14 CheXpert observations: 1.0 positive, 0.0 "
        "negative, -1.0 uncertain, null not mentioned. Report text is never logged.")
# One stated and one negated observation: /healthz checks both come out right.
HEALTH_TEXT = "Small right pleural effusion. No pneumothorax."


class CxrRequest(LabelRequest):
    include_evidence: bool = Field(
        default=False, description="rules only: the sentence that decided each label")


class CxrItem(ItemResult):
    labels: dict[str, float | None] | None = Field(
        default=None, description="observation -> 1.0 / 0.0 / -1.0 / null (blank)")
    positive: list[str] | None = None
    uncertain: list[str] | None = None
    evidence: dict[str, str] | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class CxrResponse(LabelResponse):
    results: list[CxrItem]


def _labels_item(item_id: str, labels: dict[str, float], **extra: Any) -> CxrItem:
    clean = {o: (None if labels[o] is None or math.isnan(labels[o]) else float(labels[o]))
             for o in OBSERVATIONS}
    return CxrItem(id=item_id, labels=clean,
                   positive=[o for o in OBSERVATIONS if clean[o] == 1.0],
                   uncertain=[o for o in OBSERVATIONS if clean[o] == -1.0], **extra)


# ------------------------------------------------------------------------------ rules

cxr_rules_api = FastAPI(title="ctray CXR rule labeler", version=ctray.__version__,
                        description=DOCS + " CheXpert-style rules (mention, negation, "
                                           "uncertainty).")


@serve.deployment(max_ongoing_requests=32, max_queued_requests=256,
                  ray_actor_options={"num_cpus": 0.5})
@serve.ingress(cxr_rules_api)
class CxrRulesService(Service):
    """The rule labeler; not a model, so no server-side batching."""

    app_label = "cxr-rules"

    def __init__(self) -> None:
        from ctray.tasks.cxr.rules import CxrRuleLabeler

        self._init_service()
        self.labeler = CxrRuleLabeler()

    def reconfigure(self, user_config: dict) -> None:
        self.limits = Limits.model_validate(user_config or {})

    def _label(self, texts: list[str]) -> list:
        return [self.labeler.label(t) for t in texts]

    def _item(self, item_id: str, outcome: Outcome, with_evidence: bool) -> CxrItem:
        if outcome.error is not None:
            return CxrItem(id=item_id, error=outcome.error)
        result = outcome.value
        evidence = ({o: s for o, s in result.evidence.items() if s} if with_evidence else None)
        return _labels_item(item_id, result.labels, evidence=evidence)

    @cxr_rules_api.post("/label", response_model=CxrResponse, dependencies=AUTH)
    async def label(self, body: CxrRequest, request: Request) -> CxrResponse:
        started = time.perf_counter()
        self.check_limits(body.texts)
        self.counter.record_request(len(body.texts))
        todo = [i for i, t in enumerate(body.texts) if not is_blank(t)]
        outcomes = [Outcome(error=empty_text_error())] * len(body.texts)
        done = await asyncio.to_thread(run_isolated, self._label, [body.texts[i] for i in todo])
        for i, outcome in zip(todo, done):
            outcomes[i] = Outcome(value=outcome.value, error=outcome.error)
        self.counter.record_errors(sum(o.error is not None for o in outcomes))
        self.log_request(request, body.texts, started, outcomes)
        return CxrResponse(model="cxr-rules", results=[
            self._item(body.item_id(i), o, body.include_evidence) for i, o in enumerate(outcomes)])

    @cxr_rules_api.get("/healthz", response_model=Health)
    async def healthz(self) -> Health:
        started = time.perf_counter()
        labels = (await asyncio.to_thread(self.labeler.label, HEALTH_TEXT)).labels
        if not (labels["Pleural Effusion"] == 1.0 and labels["Pneumothorax"] == 0.0):
            raise HTTPException(503, detail="rule labeler check failed")
        return Health(status="ok", latency_ms=(time.perf_counter() - started) * 1000)

    @cxr_rules_api.get("/version", response_model=VersionInfo, dependencies=AUTH)
    async def version(self) -> VersionInfo:
        return self.version_info("cxr-rules")

    @cxr_rules_api.get("/stats", response_model=BatchStats, dependencies=AUTH)
    async def stats(self) -> BatchStats:
        return self.counter.snapshot(self.replica_name)


# ------------------------------------------------------------------------------ LLM

cxr_llm_api = FastAPI(title="ctray CXR LLM labeler", version=ctray.__version__,
                      description=DOCS + " An LLM (zero-shot or fine-tuned by "
                                         "train-llm-labeler) answers one JSON object per report.")


@serve.deployment(max_ongoing_requests=16, max_queued_requests=128,
                  ray_actor_options={"num_cpus": 1})
@serve.ingress(cxr_llm_api)
class CxrLLMLabeler(LLMService):
    app_label = "cxr-llm"

    def __init__(self, backend: BackendConfig, task_options: dict[str, Any] | None = None) -> None:
        from ctray.tasks.cxr.llm_labeler import CxrLLMTask

        self._init_llm(CxrLLMTask(**(task_options or {})), backend)

    def _item(self, item_id: str, outcome: Outcome) -> CxrItem:
        if outcome.error is not None:
            return CxrItem(id=item_id, error=outcome.error, batch_size=outcome.batch_size)
        row = outcome.value
        return _labels_item(item_id, {o: row[o] for o in OBSERVATIONS},
                            batch_size=outcome.batch_size,
                            prompt_tokens=int(row.get(PROMPT_TOKENS_COL) or 0),
                            completion_tokens=int(row.get(COMPLETION_TOKENS_COL) or 0))

    @cxr_llm_api.post("/label", response_model=CxrResponse, dependencies=AUTH)
    async def label(self, body: LabelRequest, request: Request) -> CxrResponse:
        return CxrResponse(**await self.label_texts(body, request))

    @cxr_llm_api.get("/healthz", response_model=Health)
    async def healthz(self) -> Health:
        return await self.health()

    @cxr_llm_api.get("/version", response_model=VersionInfo, dependencies=AUTH)
    async def version(self) -> VersionInfo:
        return self.llm_version()

    @cxr_llm_api.get("/stats", response_model=BatchStats, dependencies=AUTH)
    async def stats(self) -> BatchStats:
        return self.counter.snapshot(self.replica_name)


# ------------------------------------------------------------------------------ builders

def _coerce(model: type[BaseModel], args: Any) -> Any:
    return args if isinstance(args, model) else model.model_validate(args or {})


class CxrRulesAppArgs(Limits):
    """All fields are the deployment's initial ``user_config`` (hot-swappable)."""


def cxr_rules_app(args: CxrRulesAppArgs, **options: Any) -> Application:
    args = _coerce(CxrRulesAppArgs, args)
    return CxrRulesService.options(user_config=args.model_dump(include=set(Limits.model_fields)),
                                   **options).bind()


def build_cxr_rules_app(args: CxrRulesAppArgs) -> Application:
    return cxr_rules_app(args)


class CxrLLMAppArgs(LLMUserConfig):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    backend: BackendConfig = Field(
        default_factory=BackendConfig, description="the LLM backend the replicas hold (kind, "
        "model, sampling)")
    answer_format: Literal["json-4class", "sft"] = Field(
        default="json-4class", description="sft: the prompt of a train-llm-labeler model")
    max_tokens: int = Field(default=300, ge=1, description="new tokens per answer")
    guided_json: bool = Field(True, description="send the JSON schema (enforced by vllm / openai)")
    repair: bool = Field(
        True, description="one follow-up request after an unusable answer (json-4class)")
    lenient: bool = Field(False, description="accept the object inside a code block or prose")

    def task_options(self) -> dict[str, Any]:
        return self.model_dump(include={"answer_format", "max_tokens", "guided_json", "repair",
                                        "lenient"})


def cxr_llm_app(args: CxrLLMAppArgs, **options: Any) -> Application:
    args = _coerce(CxrLLMAppArgs, args)
    return CxrLLMLabeler.options(
        user_config=args.model_dump(include=set(LLMUserConfig.model_fields)),
        **options).bind(args.backend, args.task_options())


def build_cxr_llm_app(args: CxrLLMAppArgs) -> Application:
    return cxr_llm_app(args)
