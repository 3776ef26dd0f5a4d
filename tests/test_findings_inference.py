"""Findings classifier (windows, pooling, export/load) and the label-findings / eval-findings jobs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from ctray.tasks.findings.stages import PROB_COLUMNS, WINDOWS_COL
from ctray.tasks.findings.model import (META_FILE, FindingsClassifier, FindingsModelMeta, save_findings_model)
from ctray.models.windows import encode_reports, max_pool, window_token_ids
from ctray.tasks.findings.schema import FINDING_COLUMNS, FINDING_NAMES
from tiny_bert import SAMPLE_DIR, build_en_tokenizer, build_ja_tokenizer, build_tiny_bert, sample_texts


@pytest.fixture(scope="module")
def en_model(tmp_path_factory):
    """A tiny random English model exported like train-findings does, window 64 / stride 16."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    root = tmp_path_factory.mktemp("en_model")
    tok = build_en_tokenizer(root / "tok")
    raw = build_tiny_bert(root / "raw", tok, hidden=32, layers=1, max_position=64, seed=3)
    thresholds = {c: 0.5 for c in FINDING_COLUMNS} | {"lung_nodule": 0.0, "cardiomegaly": 1.0}
    meta = FindingsModelMeta(thresholds=thresholds, max_length=64, stride=16, base_model="tiny")
    save_findings_model(root / "model", AutoModelForSequenceClassification.from_pretrained(raw),
                        AutoTokenizer.from_pretrained(raw), meta)
    return root / "model"


def test_windows_overlap_cover_every_token_and_fit_the_model():
    tok = build_en_tokenizer(__import__("tempfile").mkdtemp())
    ids = list(range(100, 100 + 150))
    windows = window_token_ids(ids, tok, max_length=64, stride=16)
    body = [w[1:-1] for w in windows]
    assert all(w[0] == tok.cls_token_id and w[-1] == tok.sep_token_id for w in windows)
    assert all(len(w) <= 64 for w in windows)
    assert [b[0] for b in body] == [100, 146, 192]  # step = 62 - 16
    assert all(a[-16:] == b[:16] for a, b in zip(body, body[1:]))
    assert sorted({t for b in body for t in b}) == ids
    assert len(window_token_ids(ids[:62], tok, 64, 16)) == 1
    assert len(window_token_ids([], tok, 64, 16)) == 1
    with pytest.raises(ValueError, match="stride"):
        window_token_ids(ids, tok, 64, 62)


def test_max_pool_takes_each_reports_best_window_and_its_gradient():
    logits = torch.tensor([[0.1, 2.0], [0.5, -1.0], [3.0, 0.0], [-2.0, -3.0]], requires_grad=True)
    owner = torch.tensor([0, 0, 1, 2])
    pooled = max_pool(logits, owner, 3)
    assert pooled.tolist() == [[0.5, 2.0], [3.0, 0.0], [-2.0, -3.0]]
    pooled.sum().backward()
    assert logits.grad.tolist() == [[0, 1], [1, 0], [1, 1], [1, 1]]


def test_long_report_probabilities_are_the_max_over_its_windows(en_model):
    clf = FindingsClassifier.from_pretrained(str(en_model), device="cpu")
    texts = sample_texts("en")
    long_text = " ".join(texts[:6])  # several hundred tokens: several windows of 64
    short = texts[6].split(".")[0] + "."
    probs = clf.predict_proba([long_text, short])
    assert clf.last_windows.tolist()[1] == 1 and clf.last_windows[0] >= 4
    assert clf.last_n_chunked == 1

    enc = encode_reports(clf.tokenizer, [long_text], 64, 16)
    with torch.inference_mode():
        per_window = [clf.model(input_ids=torch.tensor([w])).logits[0] for w in enc.chunks]
    expected = torch.sigmoid(torch.stack(per_window).max(dim=0).values).numpy()
    np.testing.assert_allclose(probs[0], expected, rtol=1e-4, atol=1e-6)
    # Batching (padding, length sorting) does not change a report's result.
    np.testing.assert_allclose(clf.predict_proba([short])[0], probs[1], rtol=1e-4, atol=1e-6)


def test_export_round_trip_keeps_labels_thresholds_and_window(en_model):
    meta = json.loads((en_model / META_FILE).read_text())
    assert meta["labels"] == list(FINDING_NAMES) and meta["max_length"] == 64
    clf = FindingsClassifier.from_pretrained(str(en_model))
    assert clf.label_names == list(FINDING_NAMES) and clf.columns == list(FINDING_COLUMNS)
    labels, probs = clf.predict(sample_texts("en")[:5])
    assert labels.shape == probs.shape == (5, 18) and labels.dtype == np.int64
    np.testing.assert_array_equal(labels, (probs >= clf.thresholds).astype(int))
    assert labels[:, FINDING_COLUMNS.index("lung_nodule")].tolist() == [1] * 5
    assert labels[:, FINDING_COLUMNS.index("cardiomegaly")].tolist() == [0] * 5
    assert clf.model.config.id2label[9] == "Lung nodule"
    assert clf.predict_proba([]).shape == (0, 18)


def test_japanese_tokenizer_is_tohoku_style_and_survives_export(tmp_path):
    pytest.importorskip("fugashi", reason="BertJapaneseTokenizer(word_tokenizer_type='mecab') needs fugashi")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = build_ja_tokenizer(tmp_path / "tok")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert type(loaded).__name__ == "BertJapaneseTokenizer"
    assert loaded.word_tokenizer_type == "mecab" and loaded.subword_tokenizer_type == "wordpiece"
    assert loaded.tokenize("右肺下葉に結節を認める。")[:3] == ["右肺", "下葉", "に"]
    raw = build_tiny_bert(tmp_path / "raw", tok, hidden=32, layers=1, max_position=64)
    save_findings_model(tmp_path / "model", AutoModelForSequenceClassification.from_pretrained(raw),
                        loaded, FindingsModelMeta(max_length=64, stride=16))
    clf = FindingsClassifier.from_pretrained(str(tmp_path / "model"))
    probs = clf.predict_proba(sample_texts("ja")[:3])
    assert probs.shape == (3, 18) and clf.last_n_chunked == 3  # JA reports exceed 64 tokens


# ----------------------------------------------------------------------------- jobs

def _results(out) -> pd.DataFrame:
    from ctray.io.output import OutputLayout

    files = OutputLayout(str(out)).parquet_files("results")
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def test_label_findings_rules_over_the_sample_corpus_then_eval(ray_local, tmp_path):
    from ctray.cli import run_job
    from ctray.tasks.findings.evaluation import evaluate_findings
    from ctray.tasks.findings.rules import RuleLabeler

    out = tmp_path / "rules"
    summary = run_job("label-findings", ["--config", "configs/label_findings.yaml",
                                         "--labeler", "rules", "--output", str(out)])
    assert summary.ok == 240 and summary.failed == 0
    df = _results(out).sort_values("report_id", ignore_index=True)
    assert all(c in df.columns for c in FINDING_COLUMNS)
    assert all(f"evidence_{c}" in df.columns for c in FINDING_COLUMNS)
    labeler = RuleLabeler("auto")
    for row in df.sample(25, random_state=0).itertuples():
        res = labeler.label(row.text)
        assert [getattr(row, c) for c in FINDING_COLUMNS] == [res.labels[c] for c in FINDING_COLUMNS]
        for c in FINDING_COLUMNS:
            value = getattr(row, f"evidence_{c}")
            assert (None if pd.isna(value) else value) == res.evidence[c]
    assert summary.manifest["labeler"] == "rules"
    # Resume: a second run finds everything done.
    again = run_job("label-findings", ["--config", "configs/label_findings.yaml",
                                       "--labeler", "rules", "--output", str(out)])
    assert again.ok == 0 and again.skipped == 240

    ev = tmp_path / "eval"
    result = run_job("eval-findings", ["--config", "configs/eval_findings.yaml",
                                       "--predictions", str(out), "--output", str(ev)])
    gold = pd.read_csv(SAMPLE_DIR / "sample_labels.csv").set_index("VolumeName").loc[df.report_id]
    expected = evaluate_findings(gold.reset_index(drop=True), df[list(FINDING_COLUMNS)])
    assert result["reports_evaluated"] == 240
    assert result["macro_f1"]["rules"] == pytest.approx(expected.loc["macro", "f1"])
    assert result["macro_f1"]["rules"] > 0.8  # the rules agree with the synthetic gold labels
    table = pd.read_csv(ev / "metrics_rules.csv", index_col=0)
    assert table.loc["lung_nodule", "f1"] == pytest.approx(expected.loc["lung_nodule", "f1"])
    assert "## metrics_rules" in (ev / "report.md").read_text()
    assert json.loads((ev / "manifest.json").read_text())["reports_evaluated"] == 240


def test_label_findings_model_writes_labels_probs_and_windows(ray_local, tmp_path, en_model):
    from ctray.cli import run_job

    out = tmp_path / "model"
    summary = run_job("label-findings", [
        "--config", "configs/label_findings.yaml", "--labeler", "model",
        "--model-dir", str(en_model), "--output", str(out), "--limit", "16",
        "--set", "model.batch_size=8"])
    assert summary.ok == 16 and summary.failed == 0
    df = _results(out).sort_values("report_id", ignore_index=True)
    assert all(c in df.columns for c in FINDING_COLUMNS + PROB_COLUMNS)
    probs = df[list(PROB_COLUMNS)].to_numpy()
    labels = df[list(FINDING_COLUMNS)].to_numpy()
    clf = FindingsClassifier.from_pretrained(str(en_model), device="cpu")
    np.testing.assert_allclose(probs, clf.predict_proba(df["text"].tolist()), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(labels, (probs >= clf.thresholds).astype(int))
    assert summary.manifest["chunked_reports"] == int((df[WINDOWS_COL] > 1).sum()) > 0

    # eval-findings: threshold search on the probabilities, and the model vs rules comparison.
    rules = tmp_path / "rules.csv"
    rules_df = df[["report_id", "text"]].copy()
    from ctray.tasks.findings.rules import RuleLabeler

    rules_df = RuleLabeler("en").label_batch(rules_df, "text").drop(columns="text")
    rules_df.to_csv(rules, index=False)
    ev = tmp_path / "eval"
    result = run_job("eval-findings", [
        "--predictions", str(out), "--compare-to", str(rules), "--output", str(ev),
        "--set", "predictions.label=model", "--set", "compare_to.label=rules",
        "--set", "threshold_search=true", "--allow-partial"])  # 16 of the 240 gold reports
    assert result["reports_joined"] == 16 and result["reports_evaluated"] == 8
    assert result["coverage"]["partial"] and result["coverage"]["gold"] == 240
    assert result["threshold_split"] == {"validation_reports": 8, "test_reports": 8, "seed": 42}
    thresholds = pd.read_csv(ev / "thresholds_model.csv", index_col=0)["threshold"]
    assert len(thresholds) == 18
    delta = pd.read_csv(ev / "delta_model_minus_rules.csv", index_col=0)
    a = pd.read_csv(ev / "metrics_model.csv", index_col=0)
    b = pd.read_csv(ev / "metrics_rules.csv", index_col=0)
    assert a.loc["macro", "n"] == b.loc["macro", "n"] == 8  # both on the same held-out reports
    assert float(delta.loc["macro", "f1"]) == pytest.approx(a.loc["macro", "f1"] - b.loc["macro", "f1"],
                                                             abs=1e-3)
    assert (ev / "metrics_model_at_0.5.csv").exists()
    png = (ev / "f1_bars.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
