"""Registers ``serve-bench`` (imported by ctray.jobs.load_job_modules)."""

from ctray.jobs import JobSpec, register

register(JobSpec(
    "serve-bench",
    "latency/throughput of the findings Serve app at several concurrencies, batching on and off",
    "ctray.serving.bench_job:ServeBenchConfig",
    "ctray.serving.bench_job:run_serve_bench",
    flags={"--checkpoint": "checkpoint", "--url": "url"},
    resumable=False,
))
