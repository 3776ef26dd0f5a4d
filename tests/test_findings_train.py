"""train-findings: a 2-worker Ray Train run that learns the synthetic corpus, and resume."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ctray.errors import UserError
from ctray.tasks.findings.schema import FINDING_COLUMNS
from tiny_bert import SAMPLE_DIR, build_ja_tokenizer, build_tiny_bert

pytest.importorskip("fugashi", reason="the tohoku-style Japanese tokenizer needs fugashi")

EPOCHS = 20


def _config(tmp_path, model: str, epochs: int, lr: float = 3e-3):
    from ctray.tasks.findings.train_job import TrainFindingsConfig

    return TrainFindingsConfig.model_validate({
        "run": {"output": str(tmp_path / "run")},
        "model": model,
        # Impressions list the positive findings: a tiny model trained from scratch can
        # learn them in seconds. Windows of 32 tokens make some reports span two windows,
        # so training goes through the same window max-pooling as inference.
        "corpus": {"path": str(SAMPLE_DIR / "sample_reports_ja.csv"),
                   "sections": {"impressions": "Impressions_JA"}, "text_sections": ["impressions"]},
        # lr 2e-5 (the paper's, for a pretrained BERT) is far too low for a random tiny model.
        "training": {"epochs": epochs, "learning_rate": lr, "max_length": 32, "stride": 8,
                     "batch_size": 4, "eval_batch_size": 16},
        "scaling": {"num_workers": 2, "use_gpu": False},
        "checkpoint": {"num_to_keep": 2},
    })


def _macro_f1(y: np.ndarray, pred: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(np.mean([f1_score(y[:, j], pred[:, j], zero_division=0) for j in range(y.shape[1])]))


@pytest.mark.extended
def test_two_workers_learn_the_corpus_and_resume_from_the_next_epoch(ray_local, tmp_path):
    from ctray.tasks.findings.model import FindingsClassifier
    from ctray.tasks.findings.train_job import (load_labeled_reports, run_train_findings,
                                              split_reports)

    tok = build_ja_tokenizer(tmp_path / "tok")
    model = build_tiny_bert(tmp_path / "tiny", tok, hidden=32, layers=1, heads=2, max_position=64,
                            dropout=0.0, init_range=0.2, zero_positions=True)

    first = run_train_findings(_config(tmp_path, model, epochs=1))
    assert first["started_at_epoch"] == 1 and first["epochs_run"] == [1]

    # Same run name and storage: Ray Train hands the epoch-1 checkpoint back.
    second = run_train_findings(_config(tmp_path, model, epochs=EPOCHS))
    assert second["started_at_epoch"] == 2
    assert second["epochs_run"] == list(range(2, EPOCHS + 1))
    history = second["history"]
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))
    assert {h["resumed_from_epoch"] for h in history[1:]} == {1}
    assert all(h["n_chunked_train"] > 0 for h in history)

    # Held-out split as the job made it: the trivial baselines to beat.
    cfg = _config(tmp_path, model, EPOCHS)
    df, _ = load_labeled_reports(cfg.corpus, cfg.labels)
    _, val = split_reports(df, 0.2, 42)
    y = val[list(FINDING_COLUMNS)].to_numpy()
    all_positive = _macro_f1(y, np.ones_like(y))
    majority = _macro_f1(y, np.tile((y.mean(axis=0) > 0.5).astype(int), (len(y), 1)))
    baseline = max(all_positive, majority)
    best = second["best_val_macro_f1"]
    assert best > baseline + 0.2, (best, baseline)
    assert second["best_val_macro_auc"] > 0.85
    assert best == max(h["val_macro_f1"] for h in history)
    assert history[-1]["train_loss"] < history[0]["train_loss"] * 0.6

    # The exported directory reproduces the held-out score of the chosen epoch.
    clf = FindingsClassifier.from_pretrained(second["model_dir"], device="cpu")
    labels, probs = clf.predict(val["text"].tolist())
    assert _macro_f1(y, labels) == pytest.approx(best, abs=1e-6)
    meta = json.loads((tmp_path / "run" / "model" / "ctray_findings.json").read_text())
    assert meta["metrics"]["best_epoch"] == second["best_epoch"]
    assert meta["max_length"] == 32 and meta["stride"] == 8 and meta["base_model"] == model
    assert meta["source_checkpoint"] and len(meta["metrics"]["history"]) == EPOCHS
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["data"]["train_reports"] + manifest["data"]["val_reports"] == 240
    assert manifest["config"]["tokenizer"] is None  # not mistaken for a secret

    # A changed recipe under the same run name would mix two experiments.
    with pytest.raises(UserError, match="different training configuration"):
        run_train_findings(_config(tmp_path, model, epochs=EPOCHS + 1, lr=1e-3))


def test_split_keeps_identical_reports_on_one_side():
    from ctray.tasks.findings.train_job import split_reports

    texts = [f"report {i // 2}" for i in range(40)]  # two volumes per report, as in CT-RATE
    df = pd.DataFrame({"report_id": [f"v{i}" for i in range(40)], "text": texts})
    train, val = split_reports(df, 0.2, 7)
    assert len(train) + len(val) == 40 and 0 < len(val) < 40
    assert not set(train["text"]) & set(val["text"])
    again_train, _ = split_reports(df.sample(frac=1, random_state=1), 0.2, 7)
    assert again_train["report_id"].tolist() == train["report_id"].tolist()
