"""A load generator for any labeling app: keep ``concurrency`` requests in flight until
``n`` have completed and report latency percentiles, requests/s and the server-side
batch sizes seen in the responses (``bench-serve`` measures the findings app with it)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np



@dataclass
class LevelResult:
    """The figures of one concurrency level."""

    mode: str
    max_batch_size: int | None
    concurrency: int
    requests: int
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    requests_per_s: float
    reports_per_s: float
    mean_batch_size: float | None


def measure(url: str, texts: list[str], concurrency: int, n: int, texts_per_request: int = 1,
            headers: dict | None = None, timeout: float = 300.0, mode: str = "as deployed",
            max_batch_size: int | None = None, warmup: int = 0,
            request_fields: dict | None = None) -> LevelResult:
    """One load level against ``url`` (the app's ``/label`` endpoint)."""
    k = texts_per_request
    extra = {"include_probabilities": False} if request_fields is None else request_fields
    bodies = [{"texts": [texts[(i * k + j) % len(texts)] for j in range(k)], **extra}
              for i in range(max(len(texts) // k, 1))]
    if warmup:
        asyncio.run(_load(url, bodies, min(concurrency, warmup), warmup, headers or {}, timeout))
    latencies, errors, sizes, wall = asyncio.run(
        _load(url, bodies, concurrency, n, headers or {}, timeout))
    lat = np.array(latencies)
    done = n - errors
    return LevelResult(
        mode=mode, max_batch_size=max_batch_size, concurrency=concurrency, requests=n,
        errors=errors, p50_ms=round(float(np.percentile(lat, 50)), 1),
        p95_ms=round(float(np.percentile(lat, 95)), 1),
        p99_ms=round(float(np.percentile(lat, 99)), 1), mean_ms=round(float(lat.mean()), 1),
        requests_per_s=round(done / wall, 2), reports_per_s=round(done * k / wall, 2),
        mean_batch_size=round(float(np.mean(sizes)), 2) if sizes else None)


def markdown_table(results: list[LevelResult]) -> str:
    """The load levels as a markdown table."""
    lines = ["| batching | max_batch_size | concurrency | requests | errors | p50 ms | p95 ms "
             "| p99 ms | req/s | reports/s | mean batch |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.mode} | {r.max_batch_size or '-'} | {r.concurrency} | {r.requests} "
                     f"| {r.errors} | {r.p50_ms} | {r.p95_ms} | {r.p99_ms} | {r.requests_per_s} "
                     f"| {r.reports_per_s} | {r.mean_batch_size or '-'} |")
    return "\n".join(lines)


async def _load(url: str, bodies: list[dict], concurrency: int, n: int, headers: dict,
                timeout: float) -> tuple[list[float], int, list[int], float]:
    import httpx

    latencies: list[float] = []
    batch_sizes: list[int] = []
    errors = 0
    next_index = 0

    async def worker(client) -> None:
        nonlocal next_index, errors
        while next_index < n:
            body = bodies[next_index % len(bodies)]
            next_index += 1
            started = time.perf_counter()
            try:
                response = await client.post(url, json=body)
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append((time.perf_counter() - started) * 1000)
            if not ok:
                errors += 1
                continue
            batch_sizes.extend(r["batch_size"] for r in response.json()["results"]
                               if r.get("batch_size"))

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, headers=headers) as client:
        started = time.perf_counter()
        await asyncio.gather(*[worker(client) for _ in range(concurrency)])
        wall = time.perf_counter() - started
    return latencies, errors, batch_sizes, wall
