"""A small Python client for the labeling apps (``serve/*.yaml``).

>>> with LabelingClient("http://127.0.0.1:8000") as client:
...     result = client.findings(["Bilateral pleural effusion."])
...     result.results[0].positive
['Pleural effusion']

The token defaults to ``CTRAY_SERVE_TOKEN`` from the environment. A 503 (the
server's queue is full) is retried with back-off a few times; other errors raise
:class:`LabelingError` with the server's message.
"""

from __future__ import annotations

import os
import time
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from ctray.serving.auth import TOKEN_ENV
from ctray.serving.schemas import (BatchStats, FindingsResponse, Health, LLMFindingsResponse,
                                   RulesResponse, TranslateResponse, VersionInfo)

M = TypeVar("M", bound=BaseModel)

# The route prefixes of serve/*.yaml.
DEFAULT_PREFIXES = {"findings": "/findings", "rules": "/rules", "llm_findings": "/llm-findings",
                    "translate": "/translate"}


class LabelingError(RuntimeError):
    """An HTTP error of a labeling app (status code and the server's detail)."""

    def __init__(self, status_code: int, detail: Any):
        super().__init__(f"HTTP {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


class LabelingClient:
    """Calls the labeling apps of ``serve/*.yaml`` (token from the environment, 503s retried)."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", token: str | None = None,
                 timeout: float = 60.0, retries: int = 3,
                 prefixes: dict[str, str] | None = None):
        token = token or os.environ.get(TOKEN_ENV)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.prefixes = {**DEFAULT_PREFIXES, **(prefixes or {})}
        self.retries = retries
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)

    def __enter__(self) -> "LabelingClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    # -- endpoints ---------------------------------------------------------------------
    def findings(self, texts: list[str], ids: list[str] | None = None,
                 include_probabilities: bool = True) -> FindingsResponse:
        """Label reports with the findings classifier."""
        body = {"texts": list(texts), "ids": ids, "include_probabilities": include_probabilities}
        return self._post("findings", "/label", body, FindingsResponse)

    def rules(self, texts: list[str], ids: list[str] | None = None,
              include_evidence: bool = False) -> RulesResponse:
        """Label reports with the rule labeler."""
        body = {"texts": list(texts), "ids": ids, "include_evidence": include_evidence}
        return self._post("rules", "/label", body, RulesResponse)

    def llm_findings(self, texts: list[str], ids: list[str] | None = None) -> LLMFindingsResponse:
        """Label reports with the LLM labeler."""
        return self._post("llm_findings", "/label", {"texts": list(texts), "ids": ids},
                          LLMFindingsResponse)

    def translate(self, sections: dict[str, str], id: str | None = None) -> TranslateResponse:
        """Translate the sections of one report."""
        return self._post("translate", "/report", {"sections": sections, "id": id},
                          TranslateResponse)

    def health(self, app: str = "findings") -> Health:
        """``GET /healthz`` of an app."""
        return self._get(app, "/healthz", Health)

    def version(self, app: str = "findings") -> VersionInfo:
        """``GET /version`` of an app."""
        return self._get(app, "/version", VersionInfo)

    def stats(self, app: str = "findings") -> BatchStats:
        """``GET /stats`` of an app."""
        return self._get(app, "/stats", BatchStats)

    # -- transport ---------------------------------------------------------------------
    def _url(self, app: str, path: str) -> str:
        return self.prefixes[app].rstrip("/") + path

    def _post(self, app: str, path: str, body: dict[str, Any], model: type[M]) -> M:
        body = {k: v for k, v in body.items() if v is not None}
        return self._send("POST", self._url(app, path), model, json=body)

    def _get(self, app: str, path: str, model: type[M]) -> M:
        return self._send("GET", self._url(app, path), model)

    def _send(self, method: str, url: str, model: type[M], **kwargs: Any) -> M:
        for attempt in range(self.retries + 1):
            response = self._http.request(method, url, **kwargs)
            if response.status_code != 503 or attempt == self.retries:
                break
            time.sleep(_retry_after(response, attempt))
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise LabelingError(response.status_code, detail)
        return model.model_validate(response.json())


def _retry_after(response: httpx.Response, attempt: int) -> float:
    try:
        return min(float(response.headers.get("retry-after", "")), 10.0)
    except ValueError:
        return min(0.2 * 2 ** attempt, 5.0)
