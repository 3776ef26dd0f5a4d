"""Every GPU path of ctray once, on one GPU machine, in one command.

Steps (each a ``python -m ctray.cli <job> ...`` run, in order; later steps read what
earlier ones wrote):

1. demo through vLLM (``ray.data.llm``) on the bundled sample reports;
2. LEAVS through vLLM on the bundled abdominal reports;
3. train-findings (1 epoch) on the GPU, then label-findings with that classifier;
4. phantom volumes (full axial 512x512 size), train-grounding (1 epoch) on the GPU,
   then segment that one volume.

For each step it prints wall s, rows (from the step's manifest), rows/s, LLM tokens/s
where the manifest has token usage, and the peak GPU memory seen by ``nvidia-smi``.

    python benchmarks/gpu_suite.py [--output runs/gpu_suite]      # on a GPU machine
    python benchmarks/gpu_suite.py --dry-run                      # CPU-only CI

``--dry-run`` runs nothing: it builds every step's config exactly as the CLI would
(YAML + flags + --set overrides, pydantic validation), checks that every file a step
reads either exists or is written by an earlier step, and prints the plan.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Step:
    name: str
    job: str
    args: list[str]
    # Paths (relative to the suite's output) this step reads / writes.
    reads: list[str] = field(default_factory=list)
    writes: list[str] = field(default_factory=list)
    python: str | None = None  # a preparation snippet instead of a job


def plan(out: str) -> list[Step]:
    gpu_llm = ["--backend", "vllm", "--set", "backend.device=gpu", "--set", "backend.num_gpus=1"]
    return [
        Step("demo-vllm", "demo", ["--config", "configs/demo.yaml", "--output", f"{out}/demo",
                                   *gpu_llm], writes=["demo"]),
        Step("leavs-vllm", "label-leavs", ["--config", "configs/label_leavs.yaml",
                                     "--output", f"{out}/leavs", *gpu_llm], writes=["leavs"]),
        Step("train-findings", "train-findings",
             ["--config", "configs/train_findings.yaml", "--output", f"{out}/train_findings",
              "--epochs", "1", "--set", "scaling.use_gpu=true"],
             writes=["train_findings/model"]),
        Step("label-findings-model", "label-findings",
             ["--config", "configs/label_findings.yaml", "--output", f"{out}/label_findings",
              "--labeler", "model", "--model-dir", f"{out}/train_findings/model",
              "--set", "model.num_gpus=1", "--set", "model.device=cuda"],
             reads=["train_findings/model"], writes=["label_findings"]),
        Step("phantoms", "", [], writes=["phantoms/manifest.csv"],
             python=("from ctray.tasks.grounding.phantoms import write_phantom_set as w; "
                     f"w('{out}/phantoms', 1)")),
        Step("train-grounding", "train-grounding",
             ["--config", "configs/train_grounding.yaml", "--output", f"{out}/train_grounding",
              "--manifest", f"{out}/phantoms/manifest.csv", "--set", "training.epochs=1",
              "--set", "scaling.use_gpu=true"],
             reads=["phantoms/manifest.csv"], writes=["train_grounding/model"]),
        Step("segment", "segment",
             ["--config", "configs/segment.yaml", "--output", f"{out}/segment",
              "--manifest", f"{out}/phantoms/manifest.csv",
              "--model-dir", f"{out}/train_grounding/model",
              "--set", "resources.num_gpus=1"],
             reads=["phantoms/manifest.csv", "train_grounding/model"], writes=["segment"]),
    ]


def check_plan(steps: list[Step]) -> list[str]:
    """Build each job's config as the CLI would; every read is written earlier."""
    from ctray.cli import job_parser, overrides_from_args
    from ctray.config import load_config
    from ctray.jobs import JOBS, load_job_modules

    load_job_modules()
    lines, written = [], set()
    for step in steps:
        missing = [r for r in step.reads if r not in written]
        if missing:
            raise SystemExit(f"gpu_suite: step {step.name} reads {missing} before any step "
                             "writes them")
        written.update(step.writes)
        if step.python:
            lines.append(f"{step.name}: python -c {step.python!r}")
            continue
        spec = JOBS[step.job]
        args = job_parser(spec).parse_args(step.args)
        with _in_repo():
            load_config(spec.config_class, args.config, overrides_from_args(args, spec))
        lines.append(f"{step.name}: ctray {step.job} {' '.join(step.args)}")
    return lines


class _in_repo:
    def __enter__(self):
        import os

        self.cwd = os.getcwd()
        os.chdir(REPO)

    def __exit__(self, *exc):
        import os

        os.chdir(self.cwd)


def _peak_gpu_memory(stop: threading.Event, peak: list[int]) -> None:
    while not stop.is_set():
        try:
            used = subprocess.run(["nvidia-smi", "--query-gpu=memory.used",
                                   "--format=csv,noheader,nounits"], capture_output=True,
                                  text=True, timeout=10).stdout.split()
            peak[0] = max(peak[0], *(int(u) for u in used))
        except Exception:  # noqa: BLE001 - no nvidia-smi: no figure
            return
        stop.wait(0.5)


def run_step(step: Step, out: Path) -> None:
    cmd = ([sys.executable, "-c", step.python] if step.python
           else [sys.executable, "-m", "ctray.cli", step.job, *step.args])
    stop, peak = threading.Event(), [0]
    watcher = threading.Thread(target=_peak_gpu_memory, args=(stop, peak), daemon=True)
    watcher.start()
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.time() - t0
    stop.set()
    watcher.join()
    figures = f"{step.name}: exit {proc.returncode}, {wall:.1f}s, peak GPU {peak[0]} MiB"
    manifest = next((out / w / "manifest.json" for w in step.writes
                     if (out / w / "manifest.json").exists()), None)
    if manifest:
        m = json.loads(manifest.read_text())
        rows = m.get("counts", {}).get("results_rows")
        tokens = m.get("usage", {}).get("completion_tokens", 0)
        if rows:
            figures += f", {rows} rows, {rows / wall:.2f} rows/s"
        if tokens:
            figures += f", {tokens / wall:.1f} output tokens/s"
    print(figures, flush=True)
    if proc.returncode:
        print(proc.stderr[-2000:], file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", default="runs/gpu_suite")
    ap.add_argument("--dry-run", action="store_true", help="check the plan, run nothing")
    args = ap.parse_args(argv)
    steps = plan(str((REPO / args.output).resolve()) if not Path(args.output).is_absolute()
                 else args.output)
    for line in check_plan(steps):
        print(line)
    if args.dry_run:
        print(f"gpu_suite: plan of {len(steps)} steps checked (dry run)")
        return 0
    for step in steps:
        run_step(step, Path(args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
