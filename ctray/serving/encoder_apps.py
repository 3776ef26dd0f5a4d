"""Ray Serve app for the CheXbert-style CXR encoder labeler (``train-cxr-encoder``).

Same HTTP contract, limits, auth and logging as the other labeling apps
(``docs/serving.md``): ``POST /label`` with ``{"texts": [...], "ids": [...]?}`` returns the
14 CheXpert observations per report (1.0 / 0.0 / -1.0 / null, as the CXR rules and LLM
apps), per-item errors, 413 over ``max_chars`` / ``max_items``, bearer token from
``CTRAY_SERVE_TOKEN``, ``/healthz``, ``/version``, ``/stats``; report text is never logged.
Concurrent reports are batched with ``@serve.batch``; ``user_config.checkpoint`` (a local
folder or ``s3://`` / ``gs://`` URI) is hot-swapped by ``reconfigure`` like the findings
classifier's. The CT findings encoder (``train-findings``) is served by the findings app
(``ctray.serving.deployments.FindingsLabeler``); ``serve/encoders.yaml`` runs both.

Kept small and built on the shared serving helpers, so it moves with them when serving
becomes a layer below the task packages (then: ``ctray/tasks/cxr/serve.py``).
"""

# No ``from __future__ import annotations``: FastAPI and Serve read the annotations.

import asyncio
import math
import time
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from pydantic import Field
from ray import serve
from ray.serve import Application

import ctray
from ctray.serving.auth import AUTH
from ctray.serving.batching import Outcome, run_isolated
from ctray.serving.cxr_apps import DOCS, HEALTH_TEXT, CxrItem, CxrResponse, _coerce, _labels_item
from ctray.serving.deployments import _check_local_path
from ctray.serving.schemas import BatchStats, Health, LabelRequest, VersionInfo
from ctray.serving.service import (BatchingConfig, Limits, Service, const, empty_text_error,
                                   is_blank, log)

VALID_VALUES = (1.0, 0.0, -1.0)


class CxrEncoderResponse(CxrResponse):
    checkpoint: str | None = None


class CxrEncoderUserConfig(BatchingConfig):
    """``user_config`` of :class:`CxrEncoderService` (everything here is hot-swappable)."""

    checkpoint: str | None = Field(
        default=None, description="train-cxr-encoder export: a folder or an s3:// / gs:// URI")
    device: str | None = Field(default=None, description="None: CUDA when available")
    batch_size: int = Field(default=32, ge=1, description="windows per forward pass")
    cache_dir: str | None = Field(default=None, description="local copy of an s3:// checkpoint")

    def model_key(self) -> tuple:
        return (self.checkpoint, self.device, self.batch_size, self.cache_dir)


cxr_encoder_api = FastAPI(title="ctray CXR encoder labeler", version=ctray.__version__,
                          description=DOCS + " A BERT-architecture encoder with one head per "
                                             "observation (CheXbert design).")


@serve.deployment(max_ongoing_requests=32, max_queued_requests=256,
                  ray_actor_options={"num_cpus": 1})
@serve.ingress(cxr_encoder_api)
class CxrEncoderService(Service):
    app_label = "cxr-encoder"

    def __init__(self) -> None:
        self._init_service()
        self.labeler = None
        self.config: CxrEncoderUserConfig | None = None

    async def reconfigure(self, user_config: dict) -> None:
        cfg = CxrEncoderUserConfig.model_validate(user_config or {})
        if not cfg.checkpoint:
            raise ValueError("CxrEncoderService needs user_config.checkpoint (a train-cxr-encoder "
                             "export folder or s3:// URI)")
        if self.config is None or cfg.model_key() != self.config.model_key():
            from ctray.tasks.cxr.encoder_model import CXREncoderLabeler

            _check_local_path(cfg.checkpoint)
            # Loaded beside the old model, then swapped: requests in flight finish on it.
            self.labeler = await asyncio.to_thread(
                CXREncoderLabeler.load, cfg.checkpoint, device=cfg.device,
                batch_size=cfg.batch_size, cache_dir=cfg.cache_dir)
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
        labeler = self.labeler
        outcomes = await asyncio.to_thread(run_isolated, lambda b: self._label(labeler, b), texts)
        self.counter.record_batch(outcomes)
        return outcomes

    def _item(self, item_id: str, outcome: Outcome) -> CxrItem:
        if outcome.error is not None:
            return CxrItem(id=item_id, error=outcome.error, batch_size=outcome.batch_size)
        return _labels_item(item_id, outcome.value, batch_size=outcome.batch_size)

    def _model_name(self) -> str:
        meta = self.labeler.meta
        return f"cxr-encoder:{meta.base_model or 'encoder'}" + (f":{meta.stage}" if meta.stage
                                                                 else "")

    @cxr_encoder_api.post("/label", response_model=CxrEncoderResponse, dependencies=AUTH)
    async def label(self, body: LabelRequest, request: Request) -> CxrEncoderResponse:
        started = time.perf_counter()
        self.check_limits(body.texts)
        self.counter.record_request(len(body.texts))
        outcomes = await asyncio.gather(*[
            const(Outcome(error=empty_text_error())) if is_blank(t) else self.predict_batch(t)
            for t in body.texts])
        self.counter.record_errors(sum(is_blank(t) for t in body.texts))
        self.log_request(request, body.texts, started, outcomes)
        return CxrEncoderResponse(model=self._model_name(), checkpoint=self.config.checkpoint,
                                  results=[self._item(body.item_id(i), o)
                                           for i, o in enumerate(outcomes)])

    @cxr_encoder_api.get("/healthz", response_model=Health)
    async def healthz(self) -> Health:
        started = time.perf_counter()
        try:
            labels = (await asyncio.to_thread(self._label, self.labeler, [HEALTH_TEXT]))[0]
            # A trained model's answer cannot be asserted here (a fresh export may be
            # poor); every observation must get a CheXpert value or blank.
            ok = len(labels) == len(self.labeler.observations) and all(
                math.isnan(v) or v in VALID_VALUES for v in labels.values())
        except Exception as exc:  # noqa: BLE001 - any failure means unhealthy
            log.warning("cxr-encoder healthz failed: %s", type(exc).__name__)
            ok = False
        if not ok:
            raise HTTPException(503, detail="model check failed")
        return Health(status="ok", latency_ms=(time.perf_counter() - started) * 1000)

    @cxr_encoder_api.get("/version", response_model=VersionInfo, dependencies=AUTH)
    async def version(self) -> VersionInfo:
        return self.version_info(self._model_name(), checkpoint=self.config.checkpoint,
                                 batching=self.config)

    @cxr_encoder_api.get("/stats", response_model=BatchStats, dependencies=AUTH)
    async def stats(self) -> BatchStats:
        return self.counter.snapshot(self.replica_name)


class CxrEncoderAppArgs(CxrEncoderUserConfig):
    """All fields are the deployment's initial ``user_config`` (hot-swappable)."""


def cxr_encoder_app(args: CxrEncoderAppArgs, **options: Any) -> Application:
    args = _coerce(CxrEncoderAppArgs, args)
    return CxrEncoderService.options(
        user_config=args.model_dump(include=set(CxrEncoderUserConfig.model_fields)),
        **options).bind()


def build_cxr_encoder_app(args: CxrEncoderAppArgs) -> Application:
    return cxr_encoder_app(args)
