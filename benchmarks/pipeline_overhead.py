"""Pipeline overhead and scaling: a CPU stage through Ray Data vs a plain loop.

Runs the text-statistics stage over the 1,564 CT-RATE validation reports (from
../shared/data when present, else the bundled sample) and over a synthetic corpus
(100k rows by default), with the ctray runner at 1 and 2 stage workers (resume, error
capture, Parquet writing and manifest included) beside a single-process loop doing the
same per-row work. Prints wall time, rows/s and the runner/loop time ratio, and the
fixed start-up cost (the wall time of a 20-row run).

    python benchmarks/pipeline_overhead.py [--synthetic-rows 100000]

To compare two versions of the code side by side on a shared machine, run the script
twice in one shell command with ``PYTHONPATH`` pointing at each checkout.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SHARED_CSV = (Path(os.environ.get("CTRAY_SHARED_DATA", REPO.parent / "shared" / "data"))
              / "ct-rate" / "validation_reports.csv")


def corpus_frame() -> tuple[str, pd.DataFrame]:
    if SHARED_CSV.exists():
        return "CT-RATE validation", pd.read_csv(SHARED_CSV)
    return "bundled sample", pd.read_csv(REPO / "ctray" / "data" / "sample_reports_en.csv")


def plain_loop(texts: list[str]) -> float:
    from ctray.text.stats import text_stats

    start = time.perf_counter()
    for t in texts:
        text_stats(t, "en")
    return time.perf_counter() - start


def _stage_class():
    try:
        from ctray.pipeline.text_stats import TextStatsStage
    except ImportError:  # older layout (to benchmark an earlier checkout)
        from ctray.tasks.textstats import TextStatsStage
    return TextStatsStage


def ray_run(path: str, workers: int, fmt: str) -> tuple[float, int]:
    from ctray.io.corpus import CorpusConfig, read_corpus
    from ctray.pipeline.runner import RunSpec, run_pipeline
    from ctray.pipeline.stage import Resources

    stage = _stage_class()("en", resources=Resources(num_cpus=0.5, batch_size=256,
                                                     concurrency=workers))
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        summary = run_pipeline(read_corpus(CorpusConfig(path=path, format=fmt)), [stage],
                               RunSpec(job="bench", output=out, writer_batch_size=2048))
        wall = time.perf_counter() - start
    return wall, summary.ok


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--synthetic-rows", type=int, default=100_000)
    args = ap.parse_args()

    import ctray
    import ray

    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    @ray.remote(num_cpus=0.25)
    def worker_ctray() -> str:
        import ctray as c

        return str(Path(c.__file__).parent)

    print(f"ctray from {Path(ctray.__file__).parent} (driver), {ray.get(worker_ctray.remote())} (workers)")
    print(f"machine: {os.cpu_count()} CPUs; Ray sees {ray.cluster_resources().get('CPU')} CPUs")
    name, df = corpus_frame()
    with tempfile.TemporaryDirectory() as tmp:
        real = Path(tmp) / "real.csv"
        df.to_csv(real, index=False)
        tiny = Path(tmp) / "tiny.csv"
        df.head(20).to_csv(tiny, index=False)
        texts = [f"{a}\n\n{b}" for a, b in zip(df["Findings_EN"].fillna(""), df["Impressions_EN"].fillna(""))]

        synth = Path(tmp) / "synthetic.parquet"
        reps = -(-args.synthetic_rows // len(df))
        big = pd.concat([df] * reps, ignore_index=True).iloc[: args.synthetic_rows].copy()
        big["VolumeName"] = [f"syn_{i:07d}" for i in range(len(big))]
        big.to_parquet(synth)
        big_texts = [f"{a}\n\n{b}" for a, b in zip(big["Findings_EN"].fillna(""), big["Impressions_EN"].fillna(""))]

        ray_run(str(tiny), 1, "csv")  # warm-up: worker processes, imports
        startup, _ = ray_run(str(tiny), 1, "csv")
        print(f"\nstart-up (20-row run, 1 worker, after a warm-up run): {startup:.1f} s")
        print(f"\n{'corpus':28s} {'mode':26s} {'rows':>7s} {'wall s':>7s} {'rows/s':>7s} {'x loop':>7s}")
        for label, path, fmt, rows in ((f"{name} ({len(df)})", str(real), "csv", texts),
                                       (f"synthetic ({len(big)})", str(synth), "parquet", big_texts)):
            loop = plain_loop(rows)
            print(f"{label:28s} {'plain loop, 1 process':26s} {len(rows):7d} {loop:7.1f} "
                  f"{len(rows) / loop:7.0f} {1.0:7.2f}")
            for workers in (1, 2):
                wall, n = ray_run(path, workers, fmt)
                print(f"{label:28s} {f'ctray runner, {workers} worker(s)':26s} {n:7d} {wall:7.1f} "
                      f"{n / wall:7.0f} {wall / loop:7.2f}", flush=True)


if __name__ == "__main__":
    main()
