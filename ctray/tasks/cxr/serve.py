"""Serve apps of the chest X-ray labelers (14 CheXpert observations x 4 classes),
``serve/cxr.yaml``.

Same HTTP contract, limits, auth and logging as every labeling app
(:mod:`ctray.serving.service`, ``docs/serving.md``): ``POST /label`` with
``{"texts": [...], "ids": [...]?}``, per-item errors, 413 over ``max_chars`` /
``max_items``, bearer token from ``CTRAY_SERVE_TOKEN``, ``/healthz``, ``/version``,
``/stats``; report text is never logged. Two deployments:

- ``CxrRulesService``: ``CxrRuleLabeler`` (with ``include_evidence``).
- ``CxrLLMLabeler``: ``CxrLLMTask`` through an LLM backend, with server-side batching.
  A model fine-tuned by ``train-cxr-labeler`` is served by a vLLM OpenAI-compatible
  server (``vllm serve runs/train_llm_labeler/model``) with ``backend.kind: openai``
  and ``answer_format: sft`` (its training prompt); ``kind: hf`` runs it in-process.

Labels are floats: 1.0 positive, 0.0 negative, -1.0 uncertain, null blank.
"""

# No ``from __future__ import annotations``: FastAPI and Serve read the annotations.

import asyncio
import math
from typing import Any, Literal

from fastapi import Request
from pydantic import Field
from ray import serve
from ray.serve import Application

from ctray.llm.task import COMPLETION_TOKENS_COL, PROMPT_TOKENS_COL
from ctray.serving.batching import Outcome, run_isolated
from ctray.serving.llm_service import LLMAppArgs, LLMService, LLMUserConfig
from ctray.serving.schemas import CxrItem, CxrRequest, CxrResponse, LabelRequest
from ctray.serving.service import Limits, Service, coerce, ingress, service_api, user_config
from ctray.tasks.cxr.schema import OBSERVATIONS

DOCS = ("Labels chest X-ray reports with the 14 CheXpert observations: 1.0 positive, 0.0 "
        "negative, -1.0 uncertain, null not mentioned. Report text is never logged.")
# One stated and one negated observation: /healthz checks both come out right.
HEALTH_TEXT = "Small right pleural effusion. No pneumothorax."


def _labels_item(item_id: str, labels: dict[str, float], **extra: Any) -> CxrItem:
    clean = {o: (None if labels[o] is None or math.isnan(labels[o]) else float(labels[o]))
             for o in OBSERVATIONS}
    return CxrItem(id=item_id, labels=clean,
                   positive=[o for o in OBSERVATIONS if clean[o] == 1.0],
                   uncertain=[o for o in OBSERVATIONS if clean[o] == -1.0], **extra)


# ------------------------------------------------------------------------------ rules

@serve.deployment(max_ongoing_requests=32, max_queued_requests=256,
                  ray_actor_options={"num_cpus": 0.5})
@ingress(service_api("ctray CXR rule labeler",
                     DOCS + " CheXpert-style rules (mention, negation, uncertainty)."),
         CxrRequest, CxrResponse)
class CxrRulesService(Service):
    """The rule labeler; not a model, so no server-side batching."""

    app_label = "cxr-rules"
    health_failure = "rule labeler check failed"

    def __init__(self) -> None:
        from ctray.tasks.cxr.rules import CxrRuleLabeler

        self._init_service()
        self.labeler = CxrRuleLabeler()

    def reconfigure(self, user_config: dict) -> None:
        """Apply the limits without a restart."""
        self.limits = Limits.model_validate(user_config or {})

    def _label(self, texts: list[str]) -> list:
        return [self.labeler.label(t) for t in texts]

    def _item(self, item_id: str, outcome: Outcome, with_evidence: bool) -> CxrItem:
        if outcome.error is not None:
            return CxrItem(id=item_id, error=outcome.error)
        result = outcome.value
        evidence = ({o: s for o, s in result.evidence.items() if s} if with_evidence else None)
        return _labels_item(item_id, result.labels, evidence=evidence)

    async def label(self, body: CxrRequest, request: Request) -> CxrResponse:
        """``POST /label``: the 14 observations, optionally with evidence."""
        async def run(positions: list[int], texts: list[str]) -> list[Outcome]:
            return [Outcome(value=o.value, error=o.error)
                    for o in await asyncio.to_thread(run_isolated, self._label, texts)]

        outcomes = await self.run_texts(body.texts, request, run)
        return CxrResponse(model=self.model_name(), results=[
            self._item(body.item_id(i), o, body.include_evidence) for i, o in enumerate(outcomes)])

    def model_name(self) -> str:
        """``cxr-rules``."""
        return "cxr-rules"

    def probe(self) -> bool:
        """An effusion stated and a pneumothorax negated, both read right."""
        labels = self.labeler.label(HEALTH_TEXT).labels
        return labels["Pleural Effusion"] == 1.0 and labels["Pneumothorax"] == 0.0


# ------------------------------------------------------------------------------ LLM

@serve.deployment(max_ongoing_requests=16, max_queued_requests=128,
                  ray_actor_options={"num_cpus": 1})
@ingress(service_api("ctray CXR LLM labeler",
                     DOCS + " An LLM (zero-shot or fine-tuned by train-cxr-labeler) answers "
                     "one JSON object per report."), LabelRequest, CxrResponse)
class CxrLLMLabeler(LLMService):
    """The CXR LLM task behind the labeling API, with server-side batching."""

    app_label = "cxr-llm"

    def __init__(self, backend, task_options: dict[str, Any] | None = None) -> None:
        from ctray.tasks.cxr.llm_tasks import CxrLLMTask

        self._init_llm(CxrLLMTask(**(task_options or {})), backend)

    def _item(self, item_id: str, outcome: Outcome) -> CxrItem:
        if outcome.error is not None:
            return CxrItem(id=item_id, error=outcome.error, batch_size=outcome.batch_size)
        row = outcome.value
        return _labels_item(item_id, {o: row[o] for o in OBSERVATIONS},
                            batch_size=outcome.batch_size,
                            prompt_tokens=int(row.get(PROMPT_TOKENS_COL) or 0),
                            completion_tokens=int(row.get(COMPLETION_TOKENS_COL) or 0))

    async def label(self, body: LabelRequest, request: Request) -> CxrResponse:
        """``POST /label``: the 14 observations from the LLM's JSON answer."""
        return CxrResponse(**await self.label_texts(body, request))


# ------------------------------------------------------------------------------ builders

class CxrRulesAppArgs(Limits):
    """All fields are the deployment's initial ``user_config`` (hot-swappable)."""


def cxr_rules_app(args: CxrRulesAppArgs, **options: Any) -> Application:
    """The CXR rule labeler app; ``options`` are Serve deployment options."""
    args = coerce(CxrRulesAppArgs, args)
    return CxrRulesService.options(user_config=user_config(args, Limits), **options).bind()


def build_cxr_rules_app(args: CxrRulesAppArgs) -> Application:
    """``import_path`` of serve/cxr.yaml's rules app."""
    return cxr_rules_app(args)


class CxrLLMAppArgs(LLMAppArgs):
    """Batching, limits, backend and the CXR LLM task's options."""

    answer_format: Literal["json-4class", "sft"] = Field(
        default="json-4class", description="sft: the prompt of a train-cxr-labeler model")
    max_tokens: int = Field(default=300, ge=1, description="new tokens per answer")
    guided_json: bool = Field(True, description="send the JSON schema (enforced by vllm / openai)")
    repair: bool = Field(
        True, description="one follow-up request after an unusable answer (json-4class)")
    lenient: bool = Field(False, description="accept the object inside a code block or prose")

    def task_options(self) -> dict[str, Any]:
        """The keyword arguments of the LLM task."""
        return self.model_dump(include={"answer_format", "max_tokens", "guided_json", "repair",
                                        "lenient"})


def cxr_llm_app(args: CxrLLMAppArgs, **options: Any) -> Application:
    """The CXR LLM labeler app; ``options`` are Serve deployment options."""
    args = coerce(CxrLLMAppArgs, args)
    return CxrLLMLabeler.options(user_config=user_config(args, LLMUserConfig),
                                 **options).bind(args.backend, args.task_options())


def build_cxr_llm_app(args: CxrLLMAppArgs) -> Application:
    """``import_path`` of serve/cxr.yaml's LLM app."""
    return cxr_llm_app(args)
