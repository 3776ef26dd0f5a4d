"""Serve benchmark: the findings app on CPU, dynamic batching off vs on.

Builds a randomly initialised Japanese BERT classifier of the chosen size (``base``: the
shape of tohoku-nlp/bert-base-japanese-v3 that CT-BERT-JPN fine-tunes, 12 layers x 768
hidden; ``small``: 4 x 256; ``tiny``: the test model) with the tohoku-style MeCab +
WordPiece tokenizer of ``tests/tiny_bert.py`` (its vocabulary is built from the sample
reports, so the embedding table is small, but the compute per token is the real model's),
then runs ``ctray bench-serve`` on the Japanese sample reports on a local Ray instance.

    python benchmarks/serve.py --size base --concurrency 1 8 --requests 48
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIZES = {"base": dict(hidden=768, layers=12, heads=12),
         "small": dict(hidden=256, layers=4, heads=4),
         "tiny": dict(hidden=32, layers=1, heads=2)}


def build_checkpoint(out: Path, size: str) -> str:
    sys.path.insert(0, str(REPO / "tests"))
    from serve_fixtures import build_findings_checkpoint

    # Production window settings (512 tokens, stride 128), unlike the tests' 64.
    return build_findings_checkpoint(out, max_length=512, stride=128, lang="ja", **SIZES[size])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", choices=sorted(SIZES), default="base")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--requests", type=int, default=48, help="requests per level")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--replica-cpus", type=float, default=1.0)
    parser.add_argument("--output", default="runs/bench-serve")
    args = parser.parse_args()

    import ray

    from ctray.config import load_config
    from ctray.tasks.findings.bench_job import ServeBenchConfig, run_serve_bench

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        checkpoint = build_checkpoint(Path(tmp) / f"bert-{args.size}", args.size)
        print(f"built random-bert-{args.size} in {time.perf_counter() - started:.1f}s")
        ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False)
        cfg = load_config(ServeBenchConfig, REPO / "configs" / "bench_serve.yaml", [
            f"checkpoint={checkpoint}", f"run.output={args.output}",
            f"concurrency={args.concurrency}", f"requests_per_level={args.requests}",
            f"max_batch_sizes={args.batch_sizes}", f"replica_num_cpus={args.replica_cpus}",
            f"corpus.path={REPO / 'ctray' / 'data' / 'sample_reports_ja.csv'}",
            "corpus.sections={findings: Findings_JA, impressions: Impressions_JA}"])
        report = run_serve_bench(cfg)
        print(f"mean report length {report['mean_chars']} characters, "
              f"{report['n_texts']} distinct reports; results in {args.output}/manifest.json")
        ray.shutdown()


if __name__ == "__main__":
    main()
