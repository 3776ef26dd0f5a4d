"""Registers ``serve-bench`` (imported by ctray.jobs.load_job_modules)."""

from ctray.jobs import JobSpec, register

register(JobSpec(
    "serve-bench",
    "latency/throughput of the findings Serve app at several concurrencies, batching on and off",
    "ctray.serving.bench:ServeBenchConfig",
    "ctray.serving.bench:run_serve_bench",
    flags={"--checkpoint": "checkpoint", "--url": "url"},
))
