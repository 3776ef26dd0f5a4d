"""Pipeline overhead and scaling: a CPU stage through Ray Data vs a plain loop.

Prints rows/s for the text-statistics stage over the 1,564 CT-RATE validation reports
(from ../shared/data when present, else the bundled sample) and over a synthetic corpus
(100k rows by default), with the ctray runner at 1 and 2 stage workers (resume, error
capture, Parquet writing and manifest included) beside a single-process loop doing the
same per-row work.

    python benchmarks/pipeline_overhead.py [--synthetic-rows 100000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SHARED_CSV = REPO.parent / "shared" / "data" / "ct-rate" / "validation_reports.csv"


def corpus_frame() -> tuple[str, pd.DataFrame]:
    if SHARED_CSV.exists():
        return "CT-RATE validation", pd.read_csv(SHARED_CSV)
    return "bundled sample", pd.read_csv(REPO / "ctray" / "data" / "sample_reports_en.csv")


def plain_loop(texts: list[str]) -> float:
    from ctray.text.stats import text_stats

    start = time.perf_counter()
    for t in texts:
        text_stats(t, "en")
    return len(texts) / (time.perf_counter() - start)


def ray_run(path: str, workers: int, fmt: str) -> tuple[float, int]:
    from ctray.io.corpus import CorpusConfig, read_corpus
    from ctray.pipeline.runner import RunSpec, run_pipeline
    from ctray.pipeline.stage import Resources
    from ctray.tasks.textstats import TextStatsStage

    stage = TextStatsStage("en", resources=Resources(num_cpus=0.5, batch_size=256,
                                                     concurrency=workers))
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        summary = run_pipeline(read_corpus(CorpusConfig(path=path, format=fmt)), [stage],
                               RunSpec(job="bench", output=out, writer_batch_size=2048))
        wall = time.perf_counter() - start
    return summary.ok / wall, summary.ok


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--synthetic-rows", type=int, default=100_000)
    args = ap.parse_args()

    import ray

    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    print(f"machine: {os.cpu_count()} CPUs; Ray sees {ray.cluster_resources().get('CPU')} CPUs")
    name, df = corpus_frame()
    with tempfile.TemporaryDirectory() as tmp:
        real = Path(tmp) / "real.csv"
        df.to_csv(real, index=False)
        texts = [f"{a}\n\n{b}" for a, b in zip(df["Findings_EN"].fillna(""), df["Impressions_EN"].fillna(""))]

        synth = Path(tmp) / "synthetic.parquet"
        reps = -(-args.synthetic_rows // len(df))
        big = pd.concat([df] * reps, ignore_index=True).iloc[: args.synthetic_rows].copy()
        big["VolumeName"] = [f"syn_{i:07d}" for i in range(len(big))]
        big.to_parquet(synth)
        big_texts = [f"{a}\n\n{b}" for a, b in zip(big["Findings_EN"].fillna(""), big["Impressions_EN"].fillna(""))]

        print(f"\n{'corpus':32s} {'mode':28s} {'rows':>8s} {'rows/s':>10s}")
        for label, path, fmt, rows in ((f"{name} ({len(df)})", str(real), "csv", texts),
                                       (f"synthetic ({len(big)})", str(synth), "parquet", big_texts)):
            print(f"{label:32s} {'plain loop, 1 process':28s} {len(rows):8d} {plain_loop(rows):10.0f}")
            for workers in (1, 2):
                rate, n = ray_run(path, workers, fmt)
                print(f"{label:32s} {f'ctray runner, {workers} worker(s)':28s} {n:8d} {rate:10.0f}")


if __name__ == "__main__":
    main()
