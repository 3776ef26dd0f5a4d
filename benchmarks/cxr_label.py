"""Throughput of the CXR rule labeler (label-cxr --labeler rules).

    python benchmarks/cxr_label.py [--repeat 3] [--skip-job]
    python benchmarks/cxr_label.py --skip-rules --skip-job --llm-model runs/train_llm_labeler/model \
        [--llm-reports 120] [--device gpu] [--llm-set llm.answer_format=sft ...]

1. In-process: reports/s of ``CxrRuleLabeler`` over the 3,851 Open-i reports (findings +
   impression, one process; the shipped 12-report sample repeated when ../shared/data is
   absent), best of ``--repeat`` passes, and the class counts per observation.
2. The label-cxr job end to end on a local Ray (read CSV, rules actor, Parquet writer,
   manifest, labels.csv): reports/s of wall time including Ray start-up and overhead.
3. ``--llm-model``: the label-cxr job with ``--labeler llm`` on that model through vLLM
   (a train-cxr-labeler folder answers in its training format, guided JSON), over the
   first ``--llm-reports`` reports: reports/s and completion tokens/s of the job's wall
   time (engine start included) and of the manifest's engine time.
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
OPENI = REPO.parent / "shared" / "data" / "openi" / "indiana_reports.csv"
SAMPLE = REPO / "ctray" / "data" / "sample_cxr_reports.csv"


def _texts(df: pd.DataFrame) -> list[str]:
    return ["\n\n".join(x.strip() for x in (f, i) if isinstance(x, str) and x.strip())
            for f, i in zip(df["findings"], df["impression"])]


def bench_in_process(path: Path, repeat: int) -> None:
    from ctray.tasks.cxr.rules import CxrRuleLabeler
    from ctray.tasks.cxr.schema import OBSERVATIONS

    df = pd.read_csv(path, dtype=str)
    if path == SAMPLE:
        df = pd.concat([df] * 300, ignore_index=True)
    texts = [t for t in _texts(df) if t]
    labeler = CxrRuleLabeler()
    best = math.inf
    labels = None
    for _ in range(repeat):
        started = time.perf_counter()
        labels = [labeler.label(t).labels for t in texts]
        best = min(best, time.perf_counter() - started)
    print(f"rules in-process: {len(texts)} reports ({path.name}) in {best:.2f}s = "
          f"{len(texts) / best:.0f} reports/s (one process, best of {repeat})")
    table = pd.DataFrame(labels)
    print("class counts (1 / 0 / -1 / blank):")
    for obs in OBSERVATIONS:
        col = table[obs]
        print(f"  {obs:28s} {int((col == 1).sum()):5d} {int((col == 0).sum()):5d} "
              f"{int((col == -1).sum()):5d} {int(col.isna().sum()):5d}")


def bench_job(path: Path) -> None:
    from ctray.cli import main

    out = Path(tempfile.mkdtemp(prefix="cxr-bench-"))
    try:
        started = time.perf_counter()
        rc = main(["label-cxr", "--config", str(REPO / "configs" / "label_cxr.yaml"),
                   "--set", f"corpus.path={path}", "--set", f"run.output={out}"])
        wall = time.perf_counter() - started
        rows = sum(1 for _ in open(out / "labels.csv")) - 1 if rc == 0 else 0
        print(f"label-cxr job (local Ray, rules): {rows} reports in {wall:.1f}s wall = "
              f"{rows / wall:.0f} reports/s including Ray start-up (rc={rc})")
    finally:
        shutil.rmtree(out, ignore_errors=True)


def bench_label_job(path: Path, labeler: str, n: int, overrides: list[str]) -> None:
    """``label-cxr --labeler <labeler>`` on the first ``n`` rows of ``path``, end to end
    (local Ray start, model or engine load, Parquet writer, manifest): the same harness
    for every labeler, so their reports/s compare as a user would see them."""
    import json

    from ctray.cli import main

    out = Path(tempfile.mkdtemp(prefix=f"cxr-bench-{labeler}-"))
    try:
        df = pd.read_csv(path, dtype=str).head(n)
        corpus = out / "reports.csv"
        df.to_csv(corpus, index=False)
        started = time.perf_counter()
        rc = main(["label-cxr", "--config", str(REPO / "configs" / "label_cxr.yaml"),
                   "--labeler", labeler, "--set", f"corpus.path={corpus}",
                   "--set", f"run.output={out / 'run'}",
                   *[a for o in overrides for a in ("--set", o)]])
        wall = time.perf_counter() - started
        manifest = json.loads((out / "run" / "manifest.json").read_text())
        usage = manifest.get("usage", {})
        figures = {"labeler": labeler, "overrides": overrides, "rc": rc, "reports": len(df),
                   "counts": manifest.get("counts", {}), "wall_s": round(wall, 1),
                   "reports_per_s_wall": round(len(df) / wall, 3),
                   "manifest_wall_s": manifest.get("wall_time_s")}
        if usage.get("completion_tokens"):
            figures.update(completion_tokens=usage["completion_tokens"],
                           prompt_tokens=usage.get("prompt_tokens"),
                           completion_tokens_per_s_wall=round(
                               usage["completion_tokens"] / wall, 1))
        print(json.dumps({f"label_cxr_{labeler}": figures}, indent=2))
    finally:
        shutil.rmtree(out, ignore_errors=True)


def bench_llm_job(path: Path, model: str, n: int, device: str, overrides: list[str]) -> None:
    bench_label_job(path, "llm", n, ["backend.kind=vllm", f"backend.model={model}",
                                     f"backend.device={device}", *overrides])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-job", action="store_true")
    parser.add_argument("--skip-rules", action="store_true")
    parser.add_argument("--llm-model", help="also time label-cxr --labeler llm on this model")
    parser.add_argument("--llm-reports", type=int, default=120)
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    # e.g. llm.answer_format=sft llm.max_tokens=35 on a base model: the fine-tuned
    # labeler's prompt, grammar and answer length (about 35 tokens on Open-i) with the
    # base weights, i.e. its compute per report without its folder.
    parser.add_argument("--llm-set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="label-cxr --set overrides for the LLM run")
    args = parser.parse_args()
    path = OPENI if OPENI.exists() else SAMPLE
    if not args.skip_rules:
        bench_in_process(path, args.repeat)
    if not args.skip_job:
        bench_job(path)
    if args.llm_model:
        bench_llm_job(path, args.llm_model, args.llm_reports, args.device, args.llm_set)


if __name__ == "__main__":
    main()
