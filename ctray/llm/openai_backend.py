"""Any OpenAI-compatible chat endpoint (OpenAI, Azure OpenAI, a vLLM server, ...).

The API key is read only from the environment variable named by
``backend.api_key_env``; local servers (localhost / 127.x) accept a placeholder.
Requests of a batch run on a bounded thread pool (``max_parallel_requests``).
Rate limits are handled twice: a token bucket shared by the worker's threads keeps
under ``requests_per_minute`` / ``tokens_per_minute`` (each Ray worker gets its
share), and every 429, 5xx, timeout or connection error is retried with exponential
backoff and jitter; a 429 also pauses the worker's other threads, so a rate-limit
storm slows the whole worker down instead of burning every thread's retries.
Failures that survive the retries become row errors (``LLMResponse.error``).

Guided decoding: ``choices`` go out as ``extra_body={"structured_outputs":
{"choice": [...]}}`` (vLLM >= 0.10.2; the older ``guided_choice`` field was removed in
vLLM 0.12), only to non-OpenAI endpoints (api.openai.com rejects unknown fields);
the answer is checked against the options either way. ``json_schema`` goes out as a
strict ``response_format``, which OpenAI and vLLM both enforce.
"""

from __future__ import annotations

import logging
import math
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable
from urllib.parse import urlparse

from ctray.errors import UserError
from ctray.llm.base import LLMBackend, LLMRequest, LLMResponse
from ctray.llm.config import BackendConfig, MissingAPIKeyError, is_local_url

log = logging.getLogger(__name__)

#: HTTP statuses worth another try (the same set the openai client retries)
RETRY_STATUSES = frozenset({408, 409, 429}) | frozenset(range(500, 600))
#: key handed to local servers that do not check one
LOCAL_PLACEHOLDER_KEY = "EMPTY"


class TokenBucket:
    """Thread-safe token bucket refilled at ``rate_per_minute``.

    ``capacity`` (the burst) defaults to ten seconds' worth, so a fresh worker does
    not fire a whole minute's budget at once. A request larger than the capacity is
    clamped to it; otherwise it could never be admitted."""

    def __init__(self, rate_per_minute: float, capacity: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        if rate_per_minute <= 0:
            raise ValueError("rate_per_minute must be positive")
        self.rate = rate_per_minute / 60.0
        self.capacity = capacity if capacity is not None else max(1.0, self.rate * 10)
        self.tokens = self.capacity
        self._clock = clock
        self._sleep = sleep
        self._updated = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self.tokens = min(self.capacity, self.tokens + (now - self._updated) * self.rate)
        self._updated = now

    def acquire(self, amount: float = 1.0) -> float:
        """Take ``amount`` tokens, sleeping until they are available; returns seconds waited."""
        amount = min(amount, self.capacity)
        waited = 0.0
        while True:
            with self._lock:
                self._refill()
                if self.tokens >= amount:
                    self.tokens -= amount
                    return waited
                delay = (amount - self.tokens) / self.rate
            self._sleep(delay)
            waited += delay


def _is_openai_host(base_url: str | None) -> bool:
    if not base_url:
        return True  # the client's default endpoint is api.openai.com
    host = urlparse(base_url).hostname or ""
    return host.endswith("openai.com") or host.endswith("openai.azure.com")


def _retry_after(exc: Exception) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    try:
        if headers.get("retry-after-ms"):
            return float(headers["retry-after-ms"]) / 1000.0
        if headers.get("retry-after"):
            return float(headers["retry-after"])
    except ValueError:  # an HTTP date: not worth parsing, fall back to backoff
        return None
    return None


def _schema_name(schema: dict[str, Any]) -> str:
    # OpenAI requires ^[a-zA-Z0-9_-]{1,64}$ for the schema name.
    name = re.sub(r"[^a-zA-Z0-9_-]", "_", str(schema.get("title") or "response"))
    return name[:64] or "response"


def match_choice(answer: str, choices: list[str]) -> str | None:
    """The option ``answer`` names, tolerating case, quotes and trailing punctuation
    (an unguided endpoint may answer "Yes." for "yes"); None when it names none."""
    if answer in choices:
        return answer

    def norm(text: str) -> str:
        return text.strip().strip("\"'`*").strip().rstrip(".!").strip().casefold()

    wanted = norm(answer)
    found = [c for c in choices if norm(c) == wanted]
    return found[0] if len(found) == 1 else None


class OpenAIBackend(LLMBackend):
    """Any OpenAI-compatible endpoint, with retries, rate limits and parallel requests."""

    kind = "openai"
    supports_guided_choice = True
    supports_json_schema = True

    def __init__(self, client, model: str, *, max_parallel_requests: int = 8,
                 max_retries: int = 5, requests_per_minute: float | None = None,
                 tokens_per_minute: float | None = None,
                 price_per_1m_input_tokens: float | None = None,
                 price_per_1m_output_tokens: float | None = None,
                 guided_choice: bool = True, backoff_base_s: float = 0.5,
                 backoff_max_s: float = 30.0, settings: dict[str, Any] | None = None):
        self.client = client
        self.model = model
        self.max_parallel_requests = max(1, int(max_parallel_requests))
        self.max_retries = max(0, int(max_retries))
        self.rpm_bucket = TokenBucket(requests_per_minute) if requests_per_minute else None
        self.tpm_bucket = TokenBucket(tokens_per_minute) if tokens_per_minute else None
        self.price_in = price_per_1m_input_tokens
        self.price_out = price_per_1m_output_tokens
        self.guided_choice = guided_choice
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.settings = dict(settings or {})
        self._pool = ThreadPoolExecutor(max_workers=self.max_parallel_requests,
                                        thread_name_prefix="ctray-openai")
        self._lock = threading.Lock()
        self._pause_until = 0.0
        self._usage = {"requests": 0, "responses": 0, "errors": 0, "retries": 0,
                       "rate_limited": 0, "prompt_tokens": 0, "completion_tokens": 0}

    @classmethod
    def from_config(cls, cfg: BackendConfig, client=None) -> "OpenAIBackend":
        """The backend of an ``OpenAIConfig`` (key from the named environment variable)."""
        if client is None:
            client = make_client(cfg)
        # The per-minute budgets are for the whole job; every actor of the stage gets
        # an equal share (the largest pool size, to stay under when fully scaled).
        workers = cfg.concurrency if isinstance(cfg.concurrency, int) else max(cfg.concurrency)
        workers = max(1, int(workers))
        return cls(
            client, cfg.model,
            max_parallel_requests=cfg.max_parallel_requests,
            max_retries=cfg.max_retries,
            requests_per_minute=cfg.requests_per_minute / workers if cfg.requests_per_minute else None,
            tokens_per_minute=cfg.tokens_per_minute / workers if cfg.tokens_per_minute else None,
            price_per_1m_input_tokens=cfg.price_per_1m_input_tokens,
            price_per_1m_output_tokens=cfg.price_per_1m_output_tokens,
            guided_choice=not _is_openai_host(cfg.base_url) and not cfg.api_version,
            settings={"base_url": cfg.base_url, "api_version": cfg.api_version,
                      "api_key_env": cfg.api_key_env, "timeout_s": cfg.timeout_s,
                      "workers_sharing_budget": workers},
        )

    # -- requests --
    def request_kwargs(self, request: LLMRequest) -> dict[str, Any]:
        """The chat-completion arguments of one request (guided decoding as the server supports
        it)."""
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": request.messages,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
        }
        if request.seed is not None:
            kwargs["seed"] = request.seed
        if request.stop:
            kwargs["stop"] = request.stop
        if request.choices and self.guided_choice:
            kwargs["extra_body"] = {"structured_outputs": {"choice": list(request.choices)}}
        if request.json_schema is not None:
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": _schema_name(request.json_schema),
                                "schema": request.json_schema, "strict": True},
            }
        return kwargs

    def generate(self, requests: list[LLMRequest]) -> list[LLMResponse]:
        """Answer the requests in parallel; a failed request is an error response."""
        if not requests:
            return []
        # The pool is shared by all calls on this backend, so max_parallel_requests
        # holds even when several batches are answered at once.
        return list(self._pool.map(self._answer, requests))

    def _estimated_tokens(self, request: LLMRequest) -> float:
        # What a TPM limit counts: the prompt (about 4 characters a token) plus max_tokens.
        chars = sum(len(m.get("content") or "") for m in request.messages)
        return math.ceil(chars / 4) + request.max_tokens

    def _wait_for_budget(self, request: LLMRequest) -> None:
        with self._lock:
            pause = self._pause_until - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        if self.rpm_bucket is not None:
            self.rpm_bucket.acquire(1)
        if self.tpm_bucket is not None:
            self.tpm_bucket.acquire(self._estimated_tokens(request))

    def _backoff(self, attempt: int, exc: Exception) -> float:
        cap = min(self.backoff_max_s, self.backoff_base_s * (2 ** attempt))
        delay = cap / 2 + random.uniform(0, cap / 2)  # "equal jitter": spread, never zero
        hint = _retry_after(exc)
        if hint is not None:
            delay = max(delay, min(hint, self.backoff_max_s))
        return delay

    def _retryable(self, exc: Exception) -> bool:
        import openai

        if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError)):
            return True
        if isinstance(exc, openai.APIStatusError):
            return exc.status_code in RETRY_STATUSES
        return False

    def _answer(self, request: LLMRequest) -> LLMResponse:
        import openai

        kwargs = self.request_kwargs(request)
        attempt = 0
        while True:
            self._wait_for_budget(request)
            with self._lock:
                self._usage["requests"] += 1
            try:
                completion = self.client.chat.completions.create(**kwargs)
            except Exception as exc:  # noqa: BLE001 - every failure ends as a row error
                if not self._retryable(exc) or attempt >= self.max_retries:
                    with self._lock:
                        self._usage["errors"] += 1
                    return LLMResponse("", error=_describe_error(exc, attempt))
                delay = self._backoff(attempt, exc)
                with self._lock:
                    self._usage["retries"] += 1
                    if isinstance(exc, openai.RateLimitError):
                        self._usage["rate_limited"] += 1
                        # Hold the worker's other threads too: they hit the same limit.
                        self._pause_until = max(self._pause_until, time.monotonic() + delay)
                log.info("openai backend: %s, retry %d/%d in %.2f s", type(exc).__name__,
                         attempt + 1, self.max_retries, delay)
                time.sleep(delay)
                attempt += 1
                continue
            return self._to_response(request, completion, attempt)

    def _to_response(self, request: LLMRequest, completion, retries: int) -> LLMResponse:
        choice = completion.choices[0] if completion.choices else None
        text = (choice.message.content if choice is not None and choice.message else None) or ""
        usage = completion.usage
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        with self._lock:
            self._usage["responses"] += 1
            self._usage["prompt_tokens"] += prompt_tokens
            self._usage["completion_tokens"] += completion_tokens
        meta: dict[str, Any] = {
            "finish_reason": getattr(choice, "finish_reason", None),
            "retries": retries,
            "model": getattr(completion, "model", None),
        }
        if usage is None:
            meta["usage_missing"] = True
        error = None
        if request.choices:
            meta["guided"] = self.guided_choice
            matched = match_choice(text, request.choices)
            if matched is None:
                # The raw text stays in the response so the error table shows it.
                error = f"answer {text[:80]!r} is not one of the choices {request.choices}"
            else:
                text = matched
        elif request.json_schema is not None:
            meta["guided"] = True
        if error:
            with self._lock:
                self._usage["errors"] += 1
        return LLMResponse(text, prompt_tokens, completion_tokens, error=error, meta=meta)

    # -- accounting --
    def usage(self) -> dict[str, Any]:
        """Token and request counts so far."""
        with self._lock:
            totals = dict(self._usage)
        totals["estimated_cost_usd"] = self.estimated_cost(totals["prompt_tokens"],
                                                           totals["completion_tokens"])
        return totals

    def estimated_cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        """USD so far from the configured prices (None without prices)."""
        if self.price_in is None and self.price_out is None:
            return None
        return ((prompt_tokens * (self.price_in or 0.0))
                + (completion_tokens * (self.price_out or 0.0))) / 1_000_000

    def describe(self) -> dict[str, Any]:
        """Endpoint, model, usage and cost (no secret)."""
        return {
            "kind": self.kind,
            "model": self.model,
            **{k: v for k, v in self.settings.items() if v is not None},
            "max_parallel_requests": self.max_parallel_requests,
            "max_retries": self.max_retries,
            "guided_choice": self.guided_choice,
            "usage": self.usage(),
        }

    def close(self) -> None:
        """Close the HTTP client."""
        self._pool.shutdown(wait=True)
        close = getattr(self.client, "close", None)
        if close is not None:
            close()


def _describe_error(exc: Exception, retries: int) -> str:
    status = getattr(exc, "status_code", None)
    where = f"HTTP {status}" if status is not None else type(exc).__name__
    # The client's message can include the request; keep only its first line.
    message = str(exc).splitlines()[0][:200] if str(exc) else ""
    tried = f" after {retries} retries" if retries else ""
    return f"{where}{tried}: {message}" if message else f"{where}{tried}"


def make_client(cfg: BackendConfig):
    """The official client for ``cfg``; raises MissingAPIKeyError naming the variable."""
    import os

    import openai

    key = os.environ.get(cfg.api_key_env)
    if not key:
        if not is_local_url(cfg.base_url):
            raise MissingAPIKeyError(
                f"backend openai: environment variable {cfg.api_key_env} is not set "
                f"(the API key is read only from the environment; set it, or point "
                f"backend.api_key_env at the variable that holds it)")
        key = LOCAL_PLACEHOLDER_KEY
    # Retries are ours (backoff with jitter, shared 429 pause, counted in usage);
    # the client retrying as well would multiply attempts and waits.
    common = {"api_key": key, "timeout": cfg.timeout_s, "max_retries": 0}
    if cfg.api_version:
        if not cfg.base_url:
            raise UserError("backend openai: api_version (Azure) needs base_url, "
                            "the https://<resource>.openai.azure.com endpoint")
        return openai.AzureOpenAI(api_version=cfg.api_version, azure_endpoint=cfg.base_url, **common)
    return openai.OpenAI(base_url=cfg.base_url, **common)
