"""Binary classification and ordinal-agreement metrics (arrays in, dicts out).

Point estimates come from scikit-learn / scipy. :func:`binary_metrics_from_counts`
exists only because bootstrapping calls the metrics thousands of times per table
row: scikit-learn has no batched API, and per-sample calls cost minutes where a
vectorised pass over confusion counts costs milliseconds. Its formulas follow
scikit-learn's, including ``zero_division=0`` (tests check they agree).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.stats import kendalltau
from sklearn.metrics import (confusion_matrix, f1_score, matthews_corrcoef,
                             precision_score, recall_score)

BINARY_METRICS: tuple[str, ...] = ("f1", "precision", "recall", "specificity", "mcc")


def _as_binary(y) -> np.ndarray:
    arr = np.asarray(y).astype(int).ravel()
    if not np.isin(arr, (0, 1)).all():
        raise ValueError("binary metrics need 0/1 labels")
    return arr


def binary_metrics(y_true, y_pred) -> dict[str, float]:
    """F1, precision, recall, specificity, MCC, N and positive count (N+).

    Undefined ratios (no predicted or no actual positives/negatives) are 0, as with
    scikit-learn's ``zero_division=0``.
    """
    y_true, y_pred = _as_binary(y_true), _as_binary(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError("y_true and y_pred differ in length")
    tn, fp, fn, tp = confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel()
    with warnings.catch_warnings():
        # a single class in a (resampled) row is legitimate here; MCC is then 0
        warnings.filterwarnings("ignore", message="A single label was found",
                                category=UserWarning)
        mcc = float(matthews_corrcoef(y_true, y_pred))
    return {
        "f1": float(f1_score(y_true, y_pred, zero_division=0)),
        "precision": float(precision_score(y_true, y_pred, zero_division=0)),
        "recall": float(recall_score(y_true, y_pred, zero_division=0)),
        "specificity": float(tn / (tn + fp)) if tn + fp else 0.0,
        "mcc": mcc,
        "n": int(y_true.size),
        "n_positive": int(y_true.sum()),
        "tp": int(tp), "fp": int(fp), "fn": int(fn), "tn": int(tn),
    }


def _ratio(num, den) -> np.ndarray:
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den != 0)


def binary_metrics_from_counts(tp, fp, fn, tn) -> dict[str, np.ndarray]:
    """The metrics of :func:`binary_metrics` from (arrays of) confusion counts."""
    tp, fp, fn, tn = (np.asarray(x, dtype=float) for x in (tp, fp, fn, tn))
    mcc_den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return {
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "mcc": _ratio(tp * tn - fp * fn, mcc_den),
    }


def weighted_confusion_counts(y_true, y_pred, weights) -> tuple[np.ndarray, ...]:
    """(tp, fp, fn, tn) for each row of a (B, n) case-weight/multiplicity matrix."""
    y_true, y_pred = _as_binary(y_true), _as_binary(y_pred)
    w = np.asarray(weights, dtype=float)
    tp = w @ (y_true & y_pred)
    fp = w @ ((1 - y_true) & y_pred)
    fn = w @ (y_true & (1 - y_pred))
    tn = w @ ((1 - y_true) & (1 - y_pred))
    return tp, fp, fn, tn


def kendall_tau_b(x, y) -> float:
    """Kendall's tau-b (ties corrected); NaN when either side is constant."""
    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError("x and y differ in length")
    if x.size < 2:
        return float("nan")
    return float(kendalltau(x, y, variant="b").statistic)
