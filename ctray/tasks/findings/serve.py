"""Serve apps of the 18 CT-RATE findings: the fine-tuned classifier, the rule labeler and
the LLM labeler, with their app builders (``serve/findings.yaml``, ``rules.yaml``,
``llm_findings.yaml``).

The classifier batches concurrent reports with ``@serve.batch``; ``reconfigure``
applies ``user_config`` (checkpoint, batching, limits) without restarting the
replica, so ``serve deploy`` with a new ``user_config.checkpoint`` swaps the model
in place. Routes, limits, auth and logging come from :mod:`ctray.serving.service`.
"""

# No ``from __future__ import annotations``: FastAPI and Serve read the annotations.

import asyncio
from typing import Any

import numpy as np
from fastapi import Request
from pydantic import Field
from ray import serve
from ray.serve import Application

from ctray.llm.task import COMPLETION_TOKENS_COL, PROMPT_TOKENS_COL
from ctray.serving.batching import Outcome, run_isolated
from ctray.serving.llm_service import LLMAppArgs, LLMService, LLMUserConfig
from ctray.serving.schemas import (FindingsItem, FindingsRequest, FindingsResponse, LabelRequest,
                                   LLMFindingsItem, LLMFindingsResponse, RulesItem, RulesRequest,
                                   RulesResponse)
from ctray.serving.service import (BatchingConfig, Limits, Service, check_local_path, coerce,
                                   ingress, log, service_api, user_config)
from ctray.tasks.findings.schema import COLUMN_TO_NAME, FINDING_COLUMNS

DOCS = "Labels the 18 CT-RATE findings in radiology report text. Report text is never logged."
# Short reports with one stated and one negated finding: /healthz runs the model on them.
HEALTH_TEXT = "Bilateral pleural effusion is present. No pulmonary nodule."
HEALTH_TEXTS = {"en": HEALTH_TEXT, "ja": "両側に胸水を認める。肺結節は認めない。"}


# ------------------------------------------------------------------------ classifier

class FindingsUserConfig(BatchingConfig):
    """``user_config`` of :class:`FindingsLabeler` (everything here is hot-swappable)."""

    checkpoint: str | None = Field(
        default=None, description="exported model dir, s3:// or gs:// URI, or HF model id")
    device: str | None = Field(default=None, description="None: CUDA when available")
    dtype: str | None = Field(default=None, description="e.g. bfloat16 on GPU")
    chunk_batch_size: int = Field(default=16, ge=1, description="windows per forward pass")
    cache_dir: str | None = Field(None, description="where a converted GGUF model is cached")

    def model_key(self) -> tuple:
        """The fields whose change needs a model reload."""
        return (self.checkpoint, self.device, self.dtype, self.chunk_batch_size, self.cache_dir)


@serve.deployment(max_ongoing_requests=32, max_queued_requests=256,
                  ray_actor_options={"num_cpus": 1})
@ingress(service_api("ctray findings classifier", DOCS), FindingsRequest, FindingsResponse)
class FindingsLabeler(Service):
    """The classifier exported by train-findings, with server-side batching."""

    app_label = "findings"

    def __init__(self) -> None:
        self._init_service()
        self.classifier = None
        self.config: FindingsUserConfig | None = None

    async def reconfigure(self, user_config: dict) -> None:
        """Load a new checkpoint beside the old one and swap; apply batching and limits."""
        cfg = FindingsUserConfig.model_validate(user_config or {})
        if not cfg.checkpoint:
            raise ValueError("FindingsLabeler needs user_config.checkpoint (a model directory, "
                             "s3:// URI or Hugging Face id)")
        if self.config is None or cfg.model_key() != self.config.model_key():
            from ctray.tasks.findings.model import FindingsClassifier

            check_local_path(cfg.checkpoint)
            # Load beside the old model and swap the reference: requests in flight
            # finish on the old weights, none sees a half-loaded model.
            loaded = await asyncio.to_thread(
                FindingsClassifier.from_pretrained, cfg.checkpoint, device=cfg.device,
                chunk_batch_size=cfg.chunk_batch_size, dtype=cfg.dtype, cache_dir=cfg.cache_dir)
            self.classifier = loaded
            log.info("findings: loaded checkpoint %s on %s", cfg.checkpoint, loaded.device)
        self.predict_batch.set_max_batch_size(cfg.max_batch_size)
        self.predict_batch.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)
        self.limits = Limits(max_chars=cfg.max_chars, max_items=cfg.max_items)
        self.config = cfg

    def check_health(self) -> None:
        """Serve's replica health check: a model is loaded."""
        if self.classifier is None:
            raise RuntimeError("no model loaded: the deployment needs user_config.checkpoint")

    def _predict(self, classifier, texts: list[str]) -> list[tuple]:
        """(classifier, probabilities) per text: an item is read with the thresholds
        of the model that scored it, even if reconfigure swaps models meanwhile."""
        with self.model_lock:
            return [(classifier, p) for p in classifier.predict_proba(texts)]

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def predict_batch(self, texts: list[str]) -> list[Outcome]:
        """One server-side batch through the classifier (items fail alone)."""
        classifier = self.classifier
        outcomes = await asyncio.to_thread(run_isolated, lambda b: self._predict(classifier, b),
                                           texts)
        self.counter.record_batch(outcomes)
        return outcomes

    def _item(self, item_id: str, outcome: Outcome, with_probs: bool) -> FindingsItem:
        if outcome.error is not None:
            return FindingsItem(id=item_id, error=outcome.error, batch_size=outcome.batch_size)
        clf, probs = outcome.value
        probs = np.asarray(probs, dtype=float)
        labels = (probs >= clf.thresholds).astype(int)
        columns = clf.columns
        return FindingsItem(
            id=item_id, batch_size=outcome.batch_size,
            labels={c: int(v) for c, v in zip(columns, labels)},
            probabilities={c: round(float(p), 6) for c, p in zip(columns, probs)}
            if with_probs else None,
            positive=[name for name, v in zip(clf.label_names, labels) if v])

    async def label(self, body: FindingsRequest, request: Request) -> FindingsResponse:
        """``POST /label``: 0/1 per finding and (optionally) the probabilities."""
        async def run(positions: list[int], texts: list[str]) -> list[Outcome]:
            return list(await asyncio.gather(*[self.predict_batch(t) for t in texts]))

        outcomes = await self.run_texts(body.texts, request, run, batched=True)
        return FindingsResponse(
            model=self.model_name(), checkpoint=self.config.checkpoint,
            results=[self._item(body.item_id(i), o, body.include_probabilities)
                     for i, o in enumerate(outcomes)])

    def model_name(self) -> str:
        """The base model the classifier was fine-tuned from."""
        clf = self.classifier
        meta = clf.meta
        return meta.base_model or getattr(clf.model.config, "_name_or_path", "") or "bert"

    def probe(self) -> bool:
        """The fixed report scores to finite probabilities."""
        scored = self._predict(self.classifier, [HEALTH_TEXT])
        return len(scored) == 1 and bool(np.all(np.isfinite(scored[0][1])))

    def version_extra(self) -> dict[str, Any]:
        """The checkpoint and the batching settings."""
        return {"checkpoint": self.config.checkpoint, "batching": self.config}


# ------------------------------------------------------------------------ rules

@serve.deployment(max_ongoing_requests=32, max_queued_requests=256,
                  ray_actor_options={"num_cpus": 0.5})
@ingress(service_api("ctray findings rule labeler",
                     DOCS + " Rule-based (regex + negation), English and Japanese."),
         RulesRequest, RulesResponse)
class RuleLabelerService(Service):
    """The regex labeler. It is not a model, so there is no server-side batching."""

    app_label = "rules"
    health_failure = "rule labeler check failed"

    def __init__(self, lang: str = "auto") -> None:
        from ctray.tasks.findings.rules import RuleLabeler

        self._init_service()
        self.lang = lang
        self.labeler = RuleLabeler(lang)

    def reconfigure(self, user_config: dict) -> None:
        """Apply the limits without a restart."""
        self.limits = Limits.model_validate(user_config or {})

    def _label(self, texts: list[str]) -> list:
        return [self.labeler.label(t) for t in texts]

    def _item(self, item_id: str, outcome: Outcome, with_evidence: bool) -> RulesItem:
        if outcome.error is not None:
            return RulesItem(id=item_id, error=outcome.error)
        result = outcome.value
        return RulesItem(
            id=item_id, labels=dict(result.labels), lang=result.lang,
            positive=[COLUMN_TO_NAME[c] for c in FINDING_COLUMNS if result.labels.get(c)],
            evidence={c: s for c, s in result.evidence.items() if s} if with_evidence else None)

    async def label(self, body: RulesRequest, request: Request) -> RulesResponse:
        """``POST /label``: 0/1 per finding, the language, optionally the evidence."""
        async def run(positions: list[int], texts: list[str]) -> list[Outcome]:
            return [Outcome(value=o.value, error=o.error)
                    for o in await asyncio.to_thread(run_isolated, self._label, texts)]

        outcomes = await self.run_texts(body.texts, request, run)
        return RulesResponse(model=self.model_name(),
                             results=[self._item(body.item_id(i), o, body.include_evidence)
                                      for i, o in enumerate(outcomes)])

    def model_name(self) -> str:
        """``rules:<lang>``."""
        return f"rules:{self.lang}"

    def probe(self) -> bool:
        """The fixed text states an effusion and negates a nodule: both must come out right."""
        result = self.labeler.label(HEALTH_TEXTS.get(self.lang, HEALTH_TEXT))
        return result.labels["pleural_effusion"] == 1 and result.labels["lung_nodule"] == 0


# ------------------------------------------------------------------------ LLM labeler

@serve.deployment(max_ongoing_requests=16, max_queued_requests=128,
                  ray_actor_options={"num_cpus": 1})
@ingress(service_api("ctray LLM findings labeler",
                     "Labels the 18 CT-RATE findings with an LLM answering one JSON object per "
                     "report (the prompts of the LLM labeling job). Report text is never "
                     "logged."), LabelRequest, LLMFindingsResponse)
class LLMFindingsLabeler(LLMService):
    """The LLM labeler of label-findings (``labeler: llm``) behind the labeling API."""

    app_label = "llm-findings"

    def __init__(self, backend, task_options: dict[str, Any] | None = None) -> None:
        from ctray.tasks.findings.llm_tasks import FindingsLLMTask

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

    async def label(self, body: LabelRequest, request: Request) -> LLMFindingsResponse:
        """``POST /label``: 0/1 per finding from the LLM's JSON answer."""
        return LLMFindingsResponse(**await self.label_texts(body, request))


# ------------------------------------------------------------------------ app builders

class FindingsAppArgs(FindingsUserConfig):
    """All fields are the deployment's initial ``user_config`` (hot-swappable)."""


def findings_app(args: FindingsAppArgs, **options: Any) -> Application:
    """The classifier app; ``options`` are Serve deployment options."""
    args = coerce(FindingsAppArgs, args)
    return FindingsLabeler.options(user_config=user_config(args, FindingsUserConfig),
                                   **options).bind()


def build_findings_app(args: FindingsAppArgs) -> Application:
    """``import_path`` of serve/findings.yaml."""
    return findings_app(args)


class RulesAppArgs(Limits):
    """The limits (``user_config``) and the language."""

    lang: str = Field(default="auto", description="'en', 'ja' or 'auto' (per report)")


def rules_app(args: RulesAppArgs, **options: Any) -> Application:
    """The rule labeler app; ``options`` are Serve deployment options."""
    args = coerce(RulesAppArgs, args)
    return RuleLabelerService.options(user_config=user_config(args, Limits),
                                      **options).bind(args.lang)


def build_rules_app(args: RulesAppArgs) -> Application:
    """``import_path`` of serve/rules.yaml."""
    return rules_app(args)


class LLMFindingsAppArgs(LLMAppArgs):
    """Batching, limits, backend and the LLM task's options."""

    lang: str = Field(default="auto", description="prompt language: en, ja or auto (per report)")
    max_tokens: int = Field(default=400, ge=1, description="new tokens per answer")
    guided_json: bool = Field(default=True, description="send the JSON schema to the backend")
    repair: bool = Field(True, description="one follow-up request after an unusable answer")
    lenient: bool = Field(False, description="accept the object inside a code block or prose")

    def task_options(self) -> dict[str, Any]:
        """The keyword arguments of the LLM task."""
        return self.model_dump(include={"lang", "max_tokens", "guided_json", "repair", "lenient"})


def llm_findings_app(args: LLMFindingsAppArgs, **options: Any) -> Application:
    """The LLM labeler app; ``options`` are Serve deployment options."""
    args = coerce(LLMFindingsAppArgs, args)
    return LLMFindingsLabeler.options(user_config=user_config(args, LLMUserConfig),
                                      **options).bind(args.backend, args.task_options())


def build_llm_findings_app(args: LLMFindingsAppArgs) -> Application:
    """``import_path`` of serve/llm_findings.yaml."""
    return llm_findings_app(args)
