"""The base of every Serve app: routes, limits, counters, request logging, app builders.

A task's app (``ctray/tasks/<x>/serve.py``) is a :class:`Service` subclass with a
``label`` method (the request -> response of the task), ``probe`` (a fixed input the
model must get right, for ``/healthz``) and ``model_name``. :func:`ingress` writes the
routes once for every app:

``POST /label`` (or the path the app names)  the task's ``label``, behind the bearer token
``GET /healthz``  runs ``probe`` in a worker thread; 503 when it fails (no token needed)
``GET /version``  ctray/ray versions, model, batching, this replica's actor name
``GET /stats``    this replica's request, item and batch-size counts

Logs carry request ids, item counts, character counts and latency only, never
report text (nor the model's answer, which may quote it).
"""

# No ``from __future__ import annotations``: FastAPI reads the route methods'
# annotations as classes once Serve has rewritten their signatures.

import asyncio
import inspect
import logging
import threading
import time
from typing import Any, Awaitable, Callable, ClassVar

from fastapi import FastAPI, HTTPException, Request, status
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

import ctray
from ctray.serving.auth import AUTH
from ctray.serving.batching import BatchCounter, Outcome
from ctray.serving.schemas import BatchStats, Health, ItemError, VersionInfo

log = logging.getLogger("ray.serve")


class Limits(BaseModel):
    """Request size limits; part of every deployment's ``user_config``."""

    model_config = ConfigDict(extra="forbid")

    max_chars: int = Field(default=20_000, ge=1, description="per report text (413 above)")
    max_items: int = Field(default=64, ge=1, description="texts per request (413 above)")


class BatchingConfig(Limits):
    """``@serve.batch`` settings; ``max_batch_size: 1`` turns batching off."""

    max_batch_size: int = Field(default=16, ge=1,
                                description="texts per model call (1: batching off)")
    batch_wait_timeout_s: float = Field(
        default=0.01, ge=0, description="seconds a request waits for others to fill a batch")


def empty_text_error() -> ItemError:
    """The item error of a blank text (answered without a model call)."""
    return ItemError(code="empty_text", message="text is empty")


async def const(value: Any) -> Any:
    """An awaitable of a ready value (to gather it with batched calls)."""
    return value


def is_blank(text: str) -> bool:
    """Empty or whitespace only."""
    return not text or not text.strip()


class Service:
    """Base of the task deployments (each is also a FastAPI ingress, see :func:`ingress`)."""

    app_label: ClassVar[str] = "service"
    #: the 503 detail when ``probe`` fails
    health_failure: ClassVar[str] = "model check failed"

    def _init_service(self) -> None:
        self.limits: Limits = Limits()
        self.counter = BatchCounter()
        # Backends and models are called from worker threads (the event loop must
        # stay free); one at a time, since not every backend is thread-safe.
        self.model_lock = threading.Lock()
        self._replica: str | None = None

    # -- what a task app provides --------------------------------------------------------
    def probe(self) -> bool:
        """Run the model on a fixed input and say whether it answered right (in a thread)."""
        raise NotImplementedError

    def model_name(self) -> str:
        """The model label in responses and ``/version``."""
        raise NotImplementedError

    def version_extra(self) -> dict[str, Any]:
        """More ``/version`` fields (checkpoint, prompt_version, batching)."""
        return {}

    # -- the routes every app has (registered by ``ingress``) ----------------------------
    async def healthz(self) -> Health:
        """``GET /healthz``: the probe's latency, or 503."""
        started = time.perf_counter()
        try:
            ok = await asyncio.to_thread(self.probe)
        except Exception as exc:  # noqa: BLE001 - any failure means unhealthy
            log.warning("%s healthz failed: %s", self.app_label, type(exc).__name__)
            ok = False
        if not ok:
            raise HTTPException(503, detail=self.health_failure)
        return Health(status="ok", latency_ms=(time.perf_counter() - started) * 1000)

    async def version(self) -> VersionInfo:
        """``GET /version``."""
        return self.version_info(self.model_name(), **self.version_extra())

    async def stats(self) -> BatchStats:
        """``GET /stats``: this replica's counters."""
        return self.counter.snapshot(self.replica_name)

    # -- shared request handling ---------------------------------------------------------
    @property
    def replica_name(self) -> str | None:
        """This replica's Ray actor name (None outside Ray)."""
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
        """One log line per request: id, counts, sizes, latency; never text."""
        failed = sum(o.error is not None for o in outcomes)
        sizes = sorted({o.batch_size for o in outcomes if o.batch_size})
        log.info("%s request_id=%s items=%d chars=%d failed=%d batch_sizes=%s ms=%.1f",
                 self.app_label, request.headers.get("x-request-id") if request else None,
                 len(texts), sum(len(t) for t in texts), failed, sizes,
                 (time.perf_counter() - started) * 1000)

    async def run_texts(self, texts: list[str], request: Request | None,
                        run: Callable[[list[int], list[str]], Awaitable[list[Outcome]]],
                        keys: list[str] | None = None, field: str = "texts",
                        batched: bool = False) -> list[Outcome]:
        """The request flow of every text app: limits (413), counts, blank texts answered
        with ``empty_text`` without a model call, ``run(positions, texts)`` on the
        others, one log line.
        ``batched``: ``run`` goes through ``@serve.batch``, whose counter already
        counts its item errors."""
        started = time.perf_counter()
        self.check_limits(texts, field=field, keys=keys)
        self.counter.record_request(len(texts))
        todo = [i for i, t in enumerate(texts) if not is_blank(t)]
        outcomes = [Outcome(error=empty_text_error())] * len(texts)
        for i, outcome in zip(todo, await run(todo, [texts[i] for i in todo])):
            outcomes[i] = outcome
        self.counter.record_errors(len(texts) - len(todo) if batched else
                                   sum(o.error is not None for o in outcomes))
        self.log_request(request, texts, started, outcomes)
        return outcomes

    def version_info(self, model: str, **extra: Any) -> VersionInfo:
        """``/version``'s body: versions, model, replica and batching settings."""
        import ray

        batching = extra.pop("batching", None)
        return VersionInfo(app=self.app_label, ctray=ctray.__version__, ray=ray.__version__,
                           model=model, replica=self.replica_name,
                           max_batch_size=batching.max_batch_size if batching else None,
                           batch_wait_timeout_s=batching.batch_wait_timeout_s
                           if batching else None, **extra)


def check_local_path(checkpoint: str) -> None:
    """A path-like checkpoint that is missing fails here, not as a confusing hub lookup."""
    import os

    if checkpoint.startswith(("/", ".", "~")) and not os.path.isdir(os.path.expanduser(checkpoint)):
        raise ValueError(f"checkpoint {checkpoint!r} is not a directory on this node; use an "
                         "absolute path that exists on every node, an s3:// URI or a Hugging "
                         "Face model id (relative paths resolve against the replica's working "
                         "directory, not yours)")


def service_api(title: str, description: str) -> FastAPI:
    """The FastAPI app of one Serve app (OpenAPI at ``/docs``, served without a CDN)."""
    from ctray.serving.offline_docs import use_offline_docs

    api = FastAPI(title=title, version=ctray.__version__, description=description)
    use_offline_docs(api)
    api.add_exception_handler(Exception, _json_internal_error)
    return api


async def _json_internal_error(request: Request, exc: Exception):
    """Unhandled exceptions answer in JSON like every other error of the app, so that a
    plain-text 500 can only come from the Serve proxy (a lost replica: ctray.serving.proxy).
    Logged by type only: the message may quote the report."""
    from fastapi.responses import JSONResponse

    log.error("unhandled %s in %s", type(exc).__name__, request.url.path)
    return JSONResponse({"detail": f"internal error ({type(exc).__name__})"}, status_code=500)


def ingress(api: FastAPI, request_model: type[BaseModel], response_model: type[BaseModel],
            path: str = "/label") -> Callable[[type[Service]], type[Service]]:
    """Class decorator: the routes of every app on ``api`` (the class's ``label`` at
    ``POST path`` behind the token, ``/healthz``, ``/version``, ``/stats``), then
    ``serve.ingress``. Apply ``serve.deployment`` on top."""

    def wrap(cls: type[Service]) -> type[Service]:
        async def label_route(self, body, request: Request):
            return await self.label(body, request)

        # FastAPI reads the body and response types from the signature; Serve finds
        # the route by the class name in its qualified name.
        params = list(inspect.signature(label_route).parameters.values())
        label_route.__signature__ = inspect.Signature(
            [params[0], params[1].replace(annotation=request_model),
             params[2]], return_annotation=response_model)
        label_route.__qualname__ = f"{cls.__qualname__}.label_route"
        cls.label_route = label_route
        api.add_api_route(path, label_route, methods=["POST"], response_model=response_model,
                          dependencies=AUTH)
        api.add_api_route("/healthz", cls.healthz, methods=["GET"], response_model=Health)
        api.add_api_route("/version", cls.version, methods=["GET"], response_model=VersionInfo,
                          dependencies=AUTH)
        api.add_api_route("/stats", cls.stats, methods=["GET"], response_model=BatchStats,
                          dependencies=AUTH)
        return serve.ingress(api)(cls)

    return wrap


# ----------------------------------------------------------------- app builder arguments

def coerce(model: type[BaseModel], args: Any) -> Any:
    """Builder arguments as ``model``: ``serve run module:builder key=value`` passes a
    dict when Serve cannot see the annotation; validate it the same way."""
    return args if isinstance(args, model) else model.model_validate(args or {})


def user_config(args: BaseModel, cls: type[BaseModel]) -> dict[str, Any]:
    """The fields of ``args`` that are ``cls`` (a deployment's ``user_config``) fields."""
    return args.model_dump(include=set(cls.model_fields))
