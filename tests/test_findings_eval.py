import itertools
import math

import numpy as np
import pandas as pd
import pytest

from ctray.tasks.findings.evaluation import (
    apply_thresholds,
    compare,
    evaluate_findings,
    format_delta,
    plot_f1_bars,
    search_thresholds,
    write_report,
)

COLS = ["lung_nodule", "pleural_effusion", "cardiomegaly"]
Y_TRUE = pd.DataFrame({
    "lung_nodule":      [1, 1, 0, 0, 1, 0, 1, 0],
    "pleural_effusion": [0, 1, 0, 0, 0, 0, 1, 0],
    "cardiomegaly":     [0, 0, 0, 0, 0, 0, 0, 0],  # one class: AUC undefined
})
Y_PRED = pd.DataFrame({
    "lung_nodule":      [1, 0, 1, 0, 1, 0, 1, 1],
    "pleural_effusion": [0, 1, 0, 1, 0, 0, 0, 0],
    "cardiomegaly":     [0, 0, 1, 0, 0, 0, 0, 0],
})
PROBS = pd.DataFrame({
    "lung_nodule":      [0.9, 0.4, 0.6, 0.2, 0.8, 0.1, 0.7, 0.55],
    "pleural_effusion": [0.1, 0.8, 0.2, 0.6, 0.3, 0.1, 0.45, 0.05],
    "cardiomegaly":     [0.1, 0.2, 0.7, 0.1, 0.1, 0.1, 0.2, 0.1],
})


def counts(t, p):
    t, p = np.asarray(t), np.asarray(p)
    return (int(((t == 1) & (p == 1)).sum()), int(((t == 0) & (p == 1)).sum()),
            int(((t == 1) & (p == 0)).sum()), int(((t == 0) & (p == 0)).sum()))


def prf(tp, fp, fn):
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return prec, rec, f1


def pairwise_auc(t, s):
    # Probability that a random positive outranks a random negative (ties count half).
    pos = [x for x, y in zip(s, t) if y == 1]
    neg = [x for x, y in zip(s, t) if y == 0]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_per_finding_metrics_match_hand_counts():
    table = evaluate_findings(Y_TRUE, Y_PRED, PROBS)
    for col in COLS:
        tp, fp, fn, tn = counts(Y_TRUE[col], Y_PRED[col])
        prec, rec, f1 = prf(tp, fp, fn)
        row = table.loc[col]
        assert row["accuracy"] == pytest.approx((tp + tn) / len(Y_TRUE))
        assert row["precision"] == pytest.approx(prec)
        assert row["recall"] == pytest.approx(rec)
        assert row["f1"] == pytest.approx(f1)
        assert row["n_positive"] == int(Y_TRUE[col].sum())
    # lung nodule: TP=3 FP=2 FN=1 -> P 0.6, R 0.75
    assert table.loc["lung_nodule", "precision"] == pytest.approx(0.6)
    assert table.loc["lung_nodule", "recall"] == pytest.approx(0.75)
    assert table.loc["lung_nodule", "auc_roc"] == pytest.approx(
        pairwise_auc(Y_TRUE["lung_nodule"], PROBS["lung_nodule"]))
    assert math.isnan(table.loc["cardiomegaly", "auc_roc"])
    assert table.loc["lung_nodule", "finding"] == "Lung nodule"


def test_macro_and_micro_rows():
    table = evaluate_findings(Y_TRUE, Y_PRED, PROBS)
    per = table.loc[COLS]
    assert table.loc["macro", "f1"] == pytest.approx(per["f1"].mean())
    assert table.loc["macro", "recall"] == pytest.approx(per["recall"].mean())
    # NaN AUC (one-class finding) is left out of the macro mean.
    assert table.loc["macro", "auc_roc"] == pytest.approx(per["auc_roc"].dropna().mean())
    tp = fp = fn = tn = 0
    for col in COLS:
        a, b, c, d = counts(Y_TRUE[col], Y_PRED[col])
        tp, fp, fn, tn = tp + a, fp + b, fn + c, tn + d
    prec, rec, f1 = prf(tp, fp, fn)
    assert table.loc["micro", "precision"] == pytest.approx(prec)
    assert table.loc["micro", "recall"] == pytest.approx(rec)
    assert table.loc["micro", "f1"] == pytest.approx(f1)
    assert table.loc["micro", "accuracy"] == pytest.approx((tp + tn) / (tp + fp + fn + tn))
    assert table.loc["micro", "auc_roc"] == pytest.approx(
        pairwise_auc(Y_TRUE[COLS].to_numpy().ravel(), PROBS[COLS].to_numpy().ravel()))


def test_display_name_headers_and_auc_from_predictions():
    renamed = Y_TRUE.rename(columns={"lung_nodule": "Lung nodule"})
    table = evaluate_findings(renamed, Y_PRED)
    assert "lung_nodule" in table.index
    # Without probabilities the AUC comes from the hard predictions.
    assert table.loc["lung_nodule", "auc_roc"] == pytest.approx(
        pairwise_auc(Y_TRUE["lung_nodule"], Y_PRED["lung_nodule"]))
    with pytest.raises(KeyError):
        evaluate_findings(Y_TRUE, Y_PRED.drop(columns=["cardiomegaly"]))


def f1_at(t, p, thr):
    tp, fp, fn, _ = counts(t, (np.asarray(p) >= thr).astype(int))
    return prf(tp, fp, fn)[2]


def test_search_thresholds_maximises_f1():
    thr = search_thresholds(Y_TRUE, PROBS, metric="f1")
    for col in ["lung_nodule", "pleural_effusion"]:
        grid = sorted(set(PROBS[col]))
        best = max(f1_at(Y_TRUE[col], PROBS[col], g) for g in grid)
        assert f1_at(Y_TRUE[col], PROBS[col], thr[col]) == pytest.approx(best)
    # Pleural effusion positives score 0.8 and 0.45 with a 0.6 negative between them:
    # thr 0.45 -> TP 2, FP 1 (F1 0.8); thr 0.6 -> F1 0.5; thr 0.8 -> F1 2/3.
    assert thr["pleural_effusion"] == pytest.approx(0.45)
    assert thr["cardiomegaly"] == 0.5  # one class keeps the default


def test_search_thresholds_youden_and_accuracy():
    y = pd.DataFrame({"lung_nodule": [0, 0, 0, 1, 1, 1]})
    p = pd.DataFrame({"lung_nodule": [0.1, 0.2, 0.35, 0.3, 0.8, 0.9]})
    # Separable except 0.35/0.3: best Youden/accuracy thresholds give 5/6 correct.
    for metric in ("youden", "accuracy"):
        thr = search_thresholds(y, p, metric=metric)["lung_nodule"]
        pred = (p["lung_nodule"] >= thr).astype(int)
        assert (pred == y["lung_nodule"]).sum() == 5
    with pytest.raises(ValueError):
        search_thresholds(y, p, metric="mcc")


def test_apply_thresholds():
    out = apply_thresholds(PROBS, {"lung_nodule": 0.6, "pleural_effusion": 0.45,
                                   "cardiomegaly": 0.5})
    assert out["lung_nodule"].tolist() == [1, 0, 1, 0, 1, 0, 1, 0]
    assert out["pleural_effusion"].tolist() == [0, 1, 0, 1, 0, 0, 1, 0]
    assert apply_thresholds(PROBS, 0.5)["cardiomegaly"].tolist() == [0, 0, 1, 0, 0, 0, 0, 0]


def test_compare_and_format_delta():
    a = evaluate_findings(Y_TRUE, Y_PRED, PROBS)
    better = Y_TRUE.copy()
    b = evaluate_findings(Y_TRUE, better, better)
    delta = compare(a, b)
    assert delta.loc["lung_nodule", "f1"] == pytest.approx(a.loc["lung_nodule", "f1"] - 1.0)
    assert delta.loc["lung_nodule", "finding"] == "Lung nodule"
    text = format_delta(delta)
    assert text.loc["lung_nodule", "recall"] == f"{0.75 - 1.0:+.3f}"
    assert format_delta(compare(a, a)).loc["lung_nodule", "f1"] == "0.000"


def test_plot_f1_bars_writes_png(tmp_path):
    a = evaluate_findings(Y_TRUE, Y_PRED, PROBS)
    b = evaluate_findings(Y_TRUE, Y_TRUE, None)
    path = plot_f1_bars(a, b, ["model", "oracle"], tmp_path / "plots" / "f1.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image as mpimg

    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def test_write_report(tmp_path):
    a = evaluate_findings(Y_TRUE, Y_PRED, PROBS)
    written = write_report({"metrics": a, "delta": format_delta(compare(a, a))}, tmp_path)
    md = written["report.md"].read_text(encoding="utf-8")
    assert "## metrics" in md and "## delta" in md
    assert "| lung_nodule | Lung nodule | " in md
    back = pd.read_csv(written["metrics"], index_col=0)
    assert back.loc["lung_nodule", "f1"] == pytest.approx(a.loc["lung_nodule", "f1"])
    assert list(back.index[-2:]) == ["macro", "micro"]
