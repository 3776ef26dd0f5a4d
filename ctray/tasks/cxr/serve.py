"""Serve apps of the chest X-ray labelers (14 CheXpert observations x 4 classes),
``serve/cxr.yaml``.

Same HTTP contract, limits, auth and logging as every labeling app
(:mod:`ctray.serving.service`, ``docs/serving.md``): ``POST /label`` with
``{"texts": [...], "ids": [...]?}``, per-item errors, 413 over ``max_chars`` /
``max_items``, bearer token from ``CTRAY_SERVE_TOKEN``, ``/healthz``, ``/version``,
``/stats``; report text is never logged. Two deployments:

- ``CxrRulesService``: ``CxrRuleLabeler`` (with ``include_evidence``).
- ``CxrLLMLabeler``: ``CxrLLMTask`` through an LLM backend, with server-side batching.
- ``CxrEncoderService``: the CheXbert-style encoder labeler (``train-cxr-encoder``),
  batched with ``@serve.batch``; ``user_config.checkpoint`` (a folder or ``s3://`` /
  ``gs://`` URI) is hot-swapped by ``reconfigure`` like the findings classifier's
  (``serve/encoders.yaml``).
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
from ctray.serving.schemas import (CxrEncoderResponse, CxrItem, CxrRequest, CxrResponse,
                                   LabelRequest)
from ctray.serving.service import (BatchingConfig, Limits, Service, check_local_path, coerce,
                                   ingress, log, service_api, user_config)
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

# ------------------------------------------------------------------------------ encoder

VALID_VALUES = (1.0, 0.0, -1.0)


class CxrEncoderUserConfig(BatchingConfig):
    """``user_config`` of :class:`CxrEncoderService` (everything here is hot-swappable)."""

    checkpoint: str | None = Field(
        default=None, description="train-cxr-encoder export: a folder or an s3:// / gs:// URI")
    device: str | None = Field(default=None, description="None: CUDA when available")
    batch_size: int = Field(default=32, ge=1, description="windows per forward pass")
    cache_dir: str | None = Field(default=None, description="local copy of an s3:// checkpoint")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto", description="compute dtype (auto: bfloat16 on CPUs with native bf16)")
    cache_entries: int = Field(default=100_000, ge=0, description=(
        "sentences and reports the replica remembers it has read (exact); 0 turns it off"))

    def model_key(self) -> tuple:
        """The fields whose change needs a model reload."""
        return (self.checkpoint, self.device, self.batch_size, self.cache_dir, self.dtype,
                self.cache_entries)


@serve.deployment(max_ongoing_requests=32, max_queued_requests=256,
                  ray_actor_options={"num_cpus": 1})
@ingress(service_api("ctray CXR encoder labeler",
                     DOCS + " A BERT-architecture encoder with one head per observation "
                     "(CheXbert design)."), LabelRequest, CxrEncoderResponse)
class CxrEncoderService(Service):
    """The encoder labeler exported by train-cxr-encoder, with server-side batching."""

    app_label = "cxr-encoder"

    def __init__(self) -> None:
        self._init_service()
        self.labeler = None
        self.config: CxrEncoderUserConfig | None = None

    async def reconfigure(self, user_config: dict) -> None:
        """Load a new checkpoint beside the old one and swap; apply batching and limits."""
        cfg = CxrEncoderUserConfig.model_validate(user_config or {})
        if not cfg.checkpoint:
            raise ValueError("CxrEncoderService needs user_config.checkpoint (a train-cxr-encoder "
                             "export folder or s3:// URI)")
        if self.config is None or cfg.model_key() != self.config.model_key():
            from ctray.tasks.cxr.encoder_model import CXREncoderLabeler

            check_local_path(cfg.checkpoint)
            # Loaded beside the old model, then swapped: requests in flight finish on it.
            self.labeler = await asyncio.to_thread(
                CXREncoderLabeler.load, cfg.checkpoint, device=cfg.device,
                batch_size=cfg.batch_size, cache_dir=cfg.cache_dir, dtype=cfg.dtype,
                cache_entries=cfg.cache_entries)
            log.info("cxr-encoder: loaded checkpoint %s on %s", cfg.checkpoint,
                     self.labeler.device)
        self.predict_batch.set_max_batch_size(cfg.max_batch_size)
        self.predict_batch.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)
        self.limits = Limits(max_chars=cfg.max_chars, max_items=cfg.max_items)
        self.config = cfg

    def _label(self, labeler, texts: list[str]) -> list[dict[str, float]]:
        with self.model_lock:
            return labeler.label(texts)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def predict_batch(self, texts: list[str]) -> list[Outcome]:
        """One server-side batch through the encoder (items fail alone)."""
        labeler = self.labeler
        outcomes = await asyncio.to_thread(run_isolated, lambda b: self._label(labeler, b), texts)
        self.counter.record_batch(outcomes)
        return outcomes

    def _item(self, item_id: str, outcome: Outcome) -> CxrItem:
        if outcome.error is not None:
            return CxrItem(id=item_id, error=outcome.error, batch_size=outcome.batch_size)
        return _labels_item(item_id, outcome.value, batch_size=outcome.batch_size)

    def model_name(self) -> str:
        """``cxr-encoder:<base model>[:<stage>]``."""
        meta = self.labeler.meta
        return f"cxr-encoder:{meta.base_model or 'encoder'}" + (f":{meta.stage}" if meta.stage
                                                                 else "")

    async def label(self, body: LabelRequest, request: Request) -> CxrEncoderResponse:
        """``POST /label``: the 14 observations per report."""
        async def run(positions: list[int], texts: list[str]) -> list[Outcome]:
            return list(await asyncio.gather(*[self.predict_batch(t) for t in texts]))

        outcomes = await self.run_texts(body.texts, request, run, batched=True)
        return CxrEncoderResponse(model=self.model_name(), checkpoint=self.config.checkpoint,
                                  results=[self._item(body.item_id(i), o)
                                           for i, o in enumerate(outcomes)])

    def probe(self) -> bool:
        """Every observation gets a CheXpert value or blank (a trained model's answer
        cannot be asserted here: a fresh export may be poor)."""
        labels = self._label(self.labeler, [HEALTH_TEXT])[0]
        return len(labels) == len(self.labeler.observations) and all(
            math.isnan(v) or v in VALID_VALUES for v in labels.values())

    def version_extra(self) -> dict[str, Any]:
        """The checkpoint and the batching settings."""
        return {"checkpoint": self.config.checkpoint, "batching": self.config}


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


class CxrEncoderAppArgs(CxrEncoderUserConfig):
    """All fields are the deployment's initial ``user_config`` (hot-swappable)."""


def cxr_encoder_app(args: CxrEncoderAppArgs, **options: Any) -> Application:
    """The CXR encoder labeler app; ``options`` are Serve deployment options."""
    args = coerce(CxrEncoderAppArgs, args)
    return CxrEncoderService.options(user_config=user_config(args, CxrEncoderUserConfig),
                                     **options).bind()


def build_cxr_encoder_app(args: CxrEncoderAppArgs) -> Application:
    """``import_path`` of serve/encoders.yaml's CXR app."""
    return cxr_encoder_app(args)
