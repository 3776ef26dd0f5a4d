"""Ray Serve deployments of the findings classifier and the rule labeler.

Each deployment is its own FastAPI ingress (JSON in/out, OpenAPI at ``/docs``):

``POST /label``   label reports (per-item results; an item error never fails the others)
``GET /healthz``  runs the model on a fixed short report (503 when it fails)
``GET /version``  ctray/ray versions, model, checkpoint, this replica's actor name
``GET /stats``    this replica's request, item and batch-size counts

The classifier batches concurrent reports with ``@serve.batch``; ``reconfigure``
applies ``user_config`` (checkpoint, batching, limits) without restarting the
replica, so ``serve deploy`` with a new ``user_config.checkpoint`` swaps the model
in place. The LLM deployments live in ``ctray.serving.llm_deployments``.
"""

# No ``from __future__ import annotations``: FastAPI reads the route methods'
# annotations as classes once Serve has rewritten their signatures.

import asyncio
import time

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from pydantic import Field
from ray import serve

import ctray
from ctray.serving.auth import AUTH
from ctray.serving.batching import Outcome, run_isolated
from ctray.serving.schemas import (BatchStats, FindingsItem, FindingsRequest, FindingsResponse,
                                   Health, RulesItem, RulesRequest, RulesResponse, VersionInfo)
from ctray.serving.service import (HEALTH_TEXT, HEALTH_TEXTS, BatchingConfig, Limits, Service,
                                   const, empty_text_error, is_blank, log)
from ctray.tasks.findings.schema import COLUMN_TO_NAME, FINDING_COLUMNS

DOCS = "Labels the 18 CT-RATE findings in radiology report text. Report text is never logged."


class FindingsUserConfig(BatchingConfig):
    """``user_config`` of :class:`FindingsLabeler` (everything here is hot-swappable)."""

    checkpoint: str | None = Field(
        default=None, description="exported model dir, s3:// or gs:// URI, or HF model id")
    device: str | None = Field(default=None, description="None: CUDA when available")
    dtype: str | None = Field(default=None, description="e.g. bfloat16 on GPU")
    chunk_batch_size: int = Field(default=16, ge=1, description="windows per forward pass")
    cache_dir: str | None = Field(None, description="where a converted GGUF model is cached")

    def model_key(self) -> tuple:
        return (self.checkpoint, self.device, self.dtype, self.chunk_batch_size, self.cache_dir)


def _check_local_path(checkpoint: str) -> None:
    """A path-like checkpoint that is missing fails here, not as a confusing hub lookup."""
    import os

    if checkpoint.startswith(("/", ".", "~")) and not os.path.isdir(os.path.expanduser(checkpoint)):
        raise ValueError(f"checkpoint {checkpoint!r} is not a directory on this node; use an "
                         "absolute path that exists on every node, an s3:// URI or a Hugging "
                         "Face model id (relative paths resolve against the replica's working "
                         "directory, not yours)")


findings_api = FastAPI(title="ctray findings classifier", version=ctray.__version__,
                       description=DOCS)


@serve.deployment(max_ongoing_requests=32, max_queued_requests=256,
                  ray_actor_options={"num_cpus": 1})
@serve.ingress(findings_api)
class FindingsLabeler(Service):
    app_label = "findings"

    def __init__(self) -> None:
        self._init_service()
        self.classifier = None
        self.config: FindingsUserConfig | None = None

    async def reconfigure(self, user_config: dict) -> None:
        cfg = FindingsUserConfig.model_validate(user_config or {})
        if not cfg.checkpoint:
            raise ValueError("FindingsLabeler needs user_config.checkpoint (a model directory, "
                             "s3:// URI or Hugging Face id)")
        if self.config is None or cfg.model_key() != self.config.model_key():
            from ctray.tasks.findings.model import FindingsClassifier

            _check_local_path(cfg.checkpoint)
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
        if self.classifier is None:
            raise RuntimeError("no model loaded: the deployment needs user_config.checkpoint")

    def _predict(self, classifier, texts: list[str]) -> list[tuple]:
        """(classifier, probabilities) per text: an item is read with the thresholds
        of the model that scored it, even if reconfigure swaps models meanwhile."""
        with self.model_lock:
            return [(classifier, p) for p in classifier.predict_proba(texts)]

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def predict_batch(self, texts: list[str]) -> list[Outcome]:
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

    @findings_api.post("/label", response_model=FindingsResponse, dependencies=AUTH)
    async def label(self, body: FindingsRequest, request: Request) -> FindingsResponse:
        started = time.perf_counter()
        self.check_limits(body.texts)
        self.counter.record_request(len(body.texts))
        outcomes = await asyncio.gather(*[
            const(Outcome(error=empty_text_error())) if is_blank(t) else self.predict_batch(t)
            for t in body.texts])
        self.counter.record_errors(sum(is_blank(t) for t in body.texts))
        self.log_request(request, body.texts, started, outcomes)
        return FindingsResponse(
            model=self._model_name(), checkpoint=self.config.checkpoint,
            results=[self._item(body.item_id(i), o, body.include_probabilities)
                     for i, o in enumerate(outcomes)])

    def _model_name(self) -> str:
        clf = self.classifier
        meta = clf.meta
        return meta.base_model or getattr(clf.model.config, "_name_or_path", "") or "bert"

    @findings_api.get("/healthz", response_model=Health)
    async def healthz(self) -> Health:
        started = time.perf_counter()
        try:
            scored = await asyncio.to_thread(self._predict, self.classifier, [HEALTH_TEXT])
            ok = len(scored) == 1 and bool(np.all(np.isfinite(scored[0][1])))
        except Exception as exc:  # noqa: BLE001 - any failure means unhealthy
            log.warning("findings healthz failed: %s", type(exc).__name__)
            ok = False
        if not ok:
            raise HTTPException(503, detail="model check failed")
        return Health(status="ok", latency_ms=(time.perf_counter() - started) * 1000)

    @findings_api.get("/version", response_model=VersionInfo, dependencies=AUTH)
    async def version(self) -> VersionInfo:
        return self.version_info(self._model_name(), checkpoint=self.config.checkpoint,
                                 batching=self.config)

    @findings_api.get("/stats", response_model=BatchStats, dependencies=AUTH)
    async def stats(self) -> BatchStats:
        return self.counter.snapshot(self.replica_name)


rules_api = FastAPI(title="ctray findings rule labeler", version=ctray.__version__,
                    description=DOCS + " Rule-based (regex + negation), English and Japanese.")


@serve.deployment(max_ongoing_requests=32, max_queued_requests=256,
                  ray_actor_options={"num_cpus": 0.5})
@serve.ingress(rules_api)
class RuleLabelerService(Service):
    """The regex labeler. It is not a model, so there is no server-side batching."""

    app_label = "rules"

    def __init__(self, lang: str = "auto") -> None:
        from ctray.tasks.findings.rules import RuleLabeler

        self._init_service()
        self.lang = lang
        self.labeler = RuleLabeler(lang)

    def reconfigure(self, user_config: dict) -> None:
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

    @rules_api.post("/label", response_model=RulesResponse, dependencies=AUTH)
    async def label(self, body: RulesRequest, request: Request) -> RulesResponse:
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
        return RulesResponse(model=f"rules:{self.lang}",
                             results=[self._item(body.item_id(i), o, body.include_evidence)
                                      for i, o in enumerate(outcomes)])

    @rules_api.get("/healthz", response_model=Health)
    async def healthz(self) -> Health:
        started = time.perf_counter()
        result = await asyncio.to_thread(self.labeler.label,
                                         HEALTH_TEXTS.get(self.lang, HEALTH_TEXT))
        # The fixed text states an effusion and negates a nodule: both must come out right.
        if not (result.labels["pleural_effusion"] == 1 and result.labels["lung_nodule"] == 0):
            raise HTTPException(503, detail="rule labeler check failed")
        return Health(status="ok", latency_ms=(time.perf_counter() - started) * 1000)

    @rules_api.get("/version", response_model=VersionInfo, dependencies=AUTH)
    async def version(self) -> VersionInfo:
        return self.version_info(f"rules:{self.lang}")

    @rules_api.get("/stats", response_model=BatchStats, dependencies=AUTH)
    async def stats(self) -> BatchStats:
        return self.counter.snapshot(self.replica_name)
