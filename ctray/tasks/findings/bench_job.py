"""``ctray bench-serve``: latency and throughput of the findings app under load.

An asyncio load generator (httpx) keeps ``concurrency`` requests in flight until
``requests_per_level`` have completed, for each concurrency level, and reports
p50/p95/p99 latency, requests/s and the mean server-side batch size seen in the
responses. Without ``url`` it deploys the findings app itself on 127.0.0.1, once
per ``max_batch_sizes`` entry (1 means batching off), so the same run compares
batching on and off; with ``url`` it measures the app as deployed there.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import Any

import numpy as np
from pydantic import Field

from ctray.config import JobConfig, sample_path
from ctray.errors import UserError
from ctray.io.corpus import CorpusConfig
from ctray.serving.loadgen import LevelResult, markdown_table, measure

log = logging.getLogger(__name__)
APP_NAME = "bench-serve"
ROUTE = "/findings"


def _sample_corpus() -> CorpusConfig:
    return CorpusConfig(path=sample_path("sample_reports_en.csv"),
                        limit=256)


class ServeBenchConfig(JobConfig):
    job: str = "bench-serve"
    url: str | None = Field(default=None, description="a running server (root URL); "
                                                      "None: deploy the findings app here")
    route: str = Field(default=ROUTE, description="the app's route prefix under url (e.g. "
                       "/cxr-encoder, /findings-encoder, /rules); its POST /label is measured")
    checkpoint: str | None = Field(default=None, description="model to deploy when url is None")
    request_fields: dict[str, Any] = Field(
        default_factory=lambda: {"include_probabilities": False}, description="extra fields of "
        "every request body (the findings apps' include_probabilities; {} for the CXR and rules "
        "apps, whose requests refuse unknown fields)")
    corpus: CorpusConfig = Field(default_factory=_sample_corpus,
                                 description="the reports the load generator sends")
    concurrency: list[int] = Field(
        default_factory=lambda: [1, 4, 16], description="concurrent clients, one measurement "
        "level each")
    requests_per_level: int = Field(default=200, ge=1, description="requests measured per level")
    warmup_requests: int = Field(default=8, ge=0, description="requests sent before measuring")
    texts_per_request: int = Field(default=1, ge=1, description="reports per request")
    max_batch_sizes: list[int] = Field(
        default_factory=lambda: [1, 16], description="Serve batch sizes to compare (1: batching "
        "off)")
    batch_wait_timeout_s: float = Field(0.01, description="how long Serve waits to fill a batch")
    num_replicas: int = Field(1, description="replicas of the deployed app")
    replica_num_cpus: float = Field(1.0, description="CPUs per replica")
    device: str | None = Field(None, description="model device of the replicas (None: auto)")
    request_timeout_s: float = Field(300.0, description="client timeout per request")
    token_env: str = Field("CTRAY_SERVE_TOKEN", description="environment variable holding the "
                           "bearer token")


def _texts(cfg: ServeBenchConfig) -> list[str]:
    from ctray.io.corpus import read_corpus

    rows = read_corpus(cfg.corpus).select_columns(["text"]).take(cfg.corpus.limit or 256)
    texts = [r["text"] for r in rows if isinstance(r["text"], str) and r["text"].strip()]
    if not texts:
        raise UserError(f"no report text in {cfg.corpus.path}")
    return texts


def _headers(cfg: ServeBenchConfig) -> dict[str, str]:
    import os

    token = os.environ.get(cfg.token_env)
    return {"Authorization": f"Bearer {token}"} if token else {}


def _levels(cfg, url, texts, mode, max_batch_size) -> list[LevelResult]:
    out = []
    for c in cfg.concurrency:
        result = measure(url, texts, c, cfg.requests_per_level, cfg.texts_per_request,
                         _headers(cfg), cfg.request_timeout_s, mode, max_batch_size,
                         warmup=cfg.warmup_requests, request_fields=cfg.request_fields)
        log.info("bench-serve %s c=%d: p50 %.1f ms, p95 %.1f ms, %.1f req/s", mode, c,
                 result.p50_ms, result.p95_ms, result.requests_per_s)
        out.append(result)
    return out


def _deploy_and_measure(cfg: ServeBenchConfig, texts: list[str]) -> list[LevelResult]:
    from ray import serve

    from ctray.tasks.findings.serve import FindingsAppArgs, findings_app

    if not cfg.checkpoint:
        raise UserError("bench-serve: set checkpoint (a findings model directory) or url")
    from pathlib import Path

    # Replicas do not share this process's working directory.
    checkpoint = cfg.checkpoint
    if "://" not in checkpoint and Path(checkpoint).exists():
        checkpoint = str(Path(checkpoint).resolve())
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    results: list[LevelResult] = []
    try:
        for size in cfg.max_batch_sizes:
            wait = cfg.batch_wait_timeout_s if size > 1 else 0.0
            args = FindingsAppArgs(checkpoint=checkpoint, device=cfg.device, max_batch_size=size,
                                   batch_wait_timeout_s=wait,
                                   max_items=max(cfg.texts_per_request, 64))
            app = findings_app(args, num_replicas=cfg.num_replicas,
                               max_ongoing_requests=max(64, 2 * size),
                               ray_actor_options={"num_cpus": cfg.replica_num_cpus})
            serve.run(app, name=APP_NAME, route_prefix=ROUTE)
            mode = "off" if size == 1 else "on"
            results += _levels(cfg, f"http://127.0.0.1:{port}{ROUTE}/label", texts, mode, size)
            serve.delete(APP_NAME)
    finally:
        serve.shutdown()
    return results


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_serve_bench(cfg: ServeBenchConfig) -> dict:
    from ctray.io.manifest import write_job_manifest

    started = time.time()
    texts = _texts(cfg)
    if cfg.url:
        route = "/" + cfg.route.strip("/")
        results = _levels(cfg, cfg.url.rstrip("/") + f"{route}/label", texts, "as deployed", None)
    else:
        results = _deploy_and_measure(cfg, texts)
    table = markdown_table(results)
    print(table)
    report = {"n_texts": len(texts),
              "mean_chars": round(float(np.mean([len(t) for t in texts])), 1),
              "results": [asdict(r) for r in results], "table": table}
    # The figures are the manifest's job-specific part (<output>/manifest.json).
    return write_job_manifest(cfg, started, **report)
