"""What every labeling deployment shares: limits, counters, request logging, /version.

Logs carry request ids, item counts, character counts and latency only, never
report text (nor the model's answer, which may quote it).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, ClassVar

from fastapi import HTTPException, Request, status
from pydantic import BaseModel, ConfigDict, Field

import ctray
from ctray.serving.batching import BatchCounter, Outcome
from ctray.serving.schemas import ItemError, VersionInfo

log = logging.getLogger("ray.serve")

# Short reports with one stated and one negated finding: /healthz runs the model on them.
HEALTH_TEXT = "Bilateral pleural effusion is present. No pulmonary nodule."
HEALTH_TEXTS = {"en": HEALTH_TEXT, "ja": "両側に胸水を認める。肺結節は認めない。"}


class Limits(BaseModel):
    """Request size limits; part of every deployment's ``user_config``."""

    model_config = ConfigDict(extra="forbid")

    max_chars: int = Field(default=20_000, ge=1, description="per report text (413 above)")
    max_items: int = Field(default=64, ge=1, description="texts per request (413 above)")


class BatchingConfig(Limits):
    """``@serve.batch`` settings; ``max_batch_size: 1`` turns batching off."""

    max_batch_size: int = Field(
        default=16, ge=1, description="texts per model call (1: batching off)")
    batch_wait_timeout_s: float = Field(
        default=0.01, ge=0, description="seconds a request waits for others to fill a batch")


def empty_text_error() -> ItemError:
    return ItemError(code="empty_text", message="text is empty")


async def const(value: Any) -> Any:
    """An awaitable of a ready value (to gather it with batched calls)."""
    return value


def is_blank(text: str) -> bool:
    return not text or not text.strip()


class Service:
    """Mixin of the labeling deployments (each is also a FastAPI ingress)."""

    app_label: ClassVar[str] = "service"

    def _init_service(self) -> None:
        self.limits: Limits = Limits()
        self.counter = BatchCounter()
        # Backends and models are called from worker threads (the event loop must
        # stay free); one at a time, since not every backend is thread-safe.
        self.model_lock = threading.Lock()
        self._replica: str | None = None

    @property
    def replica_name(self) -> str | None:
        if self._replica is None:
            import ray

            try:
                self._replica = ray.get_runtime_context().get_actor_name()
            except Exception:  # noqa: BLE001 - outside Ray (unit tests)
                self._replica = None
        return self._replica

    def check_limits(self, texts: list[str], field: str = "texts",
                     keys: list[str] | None = None) -> None:
        """413 for a request over the configured size (before any model work).
        ``keys`` name the items in the message (section names); default: indices."""
        limits = self.limits
        if len(texts) > limits.max_items:
            raise HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
                                detail=f"{len(texts)} {field} in one request; the limit is "
                                       f"{limits.max_items} (user_config.max_items)")
        for i, text in enumerate(texts):
            if len(text) > limits.max_chars:
                where = f"{field}[{keys[i]!r}]" if keys else f"{field}[{i}]"
                raise HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
                                    detail=f"{where} has {len(text)} characters; the limit "
                                           f"is {limits.max_chars} (user_config.max_chars)")

    def log_request(self, request: Request | None, texts: list[str], started: float,
                    outcomes: list[Outcome]) -> None:
        failed = sum(o.error is not None for o in outcomes)
        sizes = sorted({o.batch_size for o in outcomes if o.batch_size})
        log.info("%s request_id=%s items=%d chars=%d failed=%d batch_sizes=%s ms=%.1f",
                 self.app_label, request.headers.get("x-request-id") if request else None,
                 len(texts), sum(len(t) for t in texts), failed, sizes,
                 (time.perf_counter() - started) * 1000)

    def version_info(self, model: str, **extra: Any) -> VersionInfo:
        import ray

        batching = extra.pop("batching", None)
        return VersionInfo(app=self.app_label, ctray=ctray.__version__, ray=ray.__version__,
                           model=model, replica=self.replica_name,
                           max_batch_size=batching.max_batch_size if batching else None,
                           batch_wait_timeout_s=batching.batch_wait_timeout_s if batching else None,
                           **extra)
