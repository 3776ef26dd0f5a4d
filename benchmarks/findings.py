"""Throughput of the findings labelers and of classifier training.

    python benchmarks/findings.py [--model-reports 32] [--skip-train]

1. Rule labeler: reports/s over CT-RATE's 1,564 validation reports (findings +
   impressions, one process) and the per-finding positive rates it finds.
2. Classifier inference on CPU: a BERT-base-sized model (BertConfig defaults, 110M
   parameters, random weights) through FindingsClassifier, every report exactly one
   512-token window, at batch sizes 1, 8 and 32.
3. Ray Train: reports/s of train-findings at 1 and 2 CPU workers with a tiny BERT
   (hidden 64, 2 layers) on the English sample corpus, windows of 256 tokens.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
CT_RATE = REPO.parent / "shared" / "data" / "ct-rate" / "validation_reports.csv"


def bench_rules() -> None:
    from ctray.tasks.findings.rules import RuleLabeler
    from ctray.tasks.findings.schema import FINDING_COLUMNS

    if not CT_RATE.exists():
        print(f"rules: {CT_RATE} not found, skipped")
        return
    df = pd.read_csv(CT_RATE)
    texts = (df["Findings_EN"].fillna("") + "\n\n" + df["Impressions_EN"].fillna("")).tolist()
    labeler = RuleLabeler("en")
    started = time.perf_counter()
    labels = pd.DataFrame([labeler.label(t).labels for t in texts])
    wall = time.perf_counter() - started
    print(f"rules: {len(texts)} CT-RATE validation reports in {wall:.2f}s = "
          f"{len(texts) / wall:.0f} reports/s (one process)")
    rates = labels[list(FINDING_COLUMNS)].mean()
    print("rules: positive rate per finding:")
    for col, rate in rates.items():
        print(f"  {col:36s} {rate:.3f}")


def bench_inference(n_reports: int) -> None:
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    from ctray.tasks.findings.model import FindingsClassifier, FindingsModelMeta

    with tempfile.TemporaryDirectory() as tmp:
        vocab = Path(tmp) / "vocab.txt"
        words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "effusion", "nodule"]
        vocab.write_text("\n".join(words) + "\n")
        tok = BertTokenizer(str(vocab))
        torch.manual_seed(0)
        config = BertConfig(num_labels=18, problem_type="multi_label_classification")
        model = BertForSequenceClassification(config).eval()
        params = sum(p.numel() for p in model.parameters()) / 1e6
        text = " ".join(["effusion", "nodule"] * 255)  # 510 tokens + [CLS] [SEP] = 512
        print(f"inference: BertConfig defaults ({params:.0f}M parameters), seq len 512, CPU, "
              f"torch threads {torch.get_num_threads()}")
        for bs in (1, 8, 32):
            clf = FindingsClassifier(model, tok, FindingsModelMeta(max_length=512, stride=128),
                                     device="cpu", chunk_batch_size=bs)
            clf.predict_proba([text] * bs)  # warm-up
            n = max(n_reports, bs)
            started = time.perf_counter()
            for s in range(0, n, bs):
                clf.predict_proba([text] * min(bs, n - s))
            wall = time.perf_counter() - started
            assert clf.last_windows.max() == 1
            print(f"inference: batch {bs:2d}: {n} reports in {wall:.1f}s = {n / wall:.2f} reports/s")


def bench_train() -> None:
    import ray

    from ctray.tasks.findings.train_job import TrainFindingsConfig, run_train_findings
    from tiny_bert import build_en_tokenizer, build_tiny_bert

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": f"{REPO / 'tests'}:{REPO}"}})
    with tempfile.TemporaryDirectory() as tmp:
        tok = build_en_tokenizer(Path(tmp) / "tok")
        model = build_tiny_bert(Path(tmp) / "tiny", tok, hidden=64, layers=2, max_position=256)
        for workers in (1, 2):
            cfg = TrainFindingsConfig.model_validate({
                "run": {"output": f"{tmp}/run{workers}"}, "model": model,
                "corpus": {"path": str(REPO / "ctray" / "data" / "sample_reports_en.csv")},
                "training": {"epochs": 2, "learning_rate": 1e-3, "max_length": 256,
                             "stride": 64, "batch_size": 8},
                "scaling": {"num_workers": workers, "use_gpu": False}})
            started = time.perf_counter()
            summary = run_train_findings(cfg)
            wall = time.perf_counter() - started
            rate = np.mean([h["train_reports_per_s"] for h in summary["history"]])
            print(f"train: {workers} worker(s), tiny BERT (hidden 64, 2 layers, 256-token "
                  f"windows): {rate:.1f} training reports/s (mean of 2 epochs, training steps "
                  f"only); whole job {wall:.1f}s")
    ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-reports", type=int, default=32)
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args()
    bench_rules()
    bench_inference(args.model_reports)
    if not args.skip_train:
        bench_train()


if __name__ == "__main__":
    main()
