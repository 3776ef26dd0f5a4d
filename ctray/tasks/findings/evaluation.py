"""Per-finding evaluation as in CT-BERT-JPN Table 3 / Table 4 (scikit-learn metrics).

``evaluate_findings`` gives accuracy, precision, recall, F1, AUC-ROC and the number
of positives per finding plus macro and micro rows; ``search_thresholds`` picks a
per-finding threshold on a validation split; ``compare`` is the "A minus B" delta
table (the paper's refined-minus-machine-translated table); ``plot_f1_bars`` and
``write_report`` produce the figure, markdown and CSV outputs.

Frames may use CT-RATE display names ("Lung nodule") or snake_case columns
("lung_nodule"); results are indexed by snake_case column with a ``finding``
column holding the display name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from ctray.tasks.findings.schema import COLUMN_TO_NAME, FINDING_COLUMNS, to_columns

METRICS = ("accuracy", "precision", "recall", "f1", "auc_roc")
METRIC_LABELS = {"accuracy": "Accuracy", "precision": "Precision", "recall": "Recall",
                 "f1": "F1", "auc_roc": "AUC-ROC", "n_positive": "Positives"}
AVERAGE_ROWS = ("macro", "micro")


def _frame(df: pd.DataFrame, columns: Sequence[str] | None) -> pd.DataFrame:
    df = to_columns(df)
    if columns is None:
        columns = [c for c in FINDING_COLUMNS if c in df.columns]
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise KeyError(f"finding columns missing: {missing}")
    return df[list(columns)]


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    # AUC is undefined when only one class is present in y_true.
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, score))


def evaluate_findings(y_true: pd.DataFrame, y_pred: pd.DataFrame,
                      probs: pd.DataFrame | None = None,
                      columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Per-finding metrics plus ``macro`` (mean over findings) and ``micro`` (pooled) rows.

    AUC-ROC uses ``probs`` when given, otherwise the 0/1 predictions; it is NaN for
    a finding whose ``y_true`` has a single class (the macro mean skips NaN).
    Precision/recall/F1 are 0 when undefined (no predicted / no true positives).
    """
    yt = _frame(y_true, columns).astype(int)
    yp = _frame(y_pred, list(yt.columns)).astype(int)
    if len(yt) != len(yp):
        raise ValueError(f"y_true has {len(yt)} rows, y_pred {len(yp)}")
    scores = (_frame(probs, list(yt.columns)).astype(float) if probs is not None
              else yp.astype(float))
    rows = {}
    for col in yt.columns:
        t, p, s = yt[col].to_numpy(), yp[col].to_numpy(), scores[col].to_numpy()
        rows[col] = {
            "finding": COLUMN_TO_NAME.get(col, col),
            "accuracy": accuracy_score(t, p),
            "precision": precision_score(t, p, zero_division=0),
            "recall": recall_score(t, p, zero_division=0),
            "f1": f1_score(t, p, zero_division=0),
            "auc_roc": _auc(t, s),
            "n_positive": int(t.sum()),
            "n": len(t),
        }
    table = pd.DataFrame.from_dict(rows, orient="index")
    macro = {m: table[m].mean(skipna=True) for m in METRICS}
    t_all, p_all, s_all = yt.to_numpy(), yp.to_numpy(), scores.to_numpy()
    micro = {
        "accuracy": accuracy_score(t_all.ravel(), p_all.ravel()),
        "precision": precision_score(t_all, p_all, average="micro", zero_division=0),
        "recall": recall_score(t_all, p_all, average="micro", zero_division=0),
        "f1": f1_score(t_all, p_all, average="micro", zero_division=0),
        "auc_roc": _auc(t_all.ravel(), s_all.ravel()),
    }
    for name, vals in (("macro", macro), ("micro", micro)):
        table.loc[name] = {"finding": name, **vals, "n_positive": int(t_all.sum()),
                           "n": len(yt)}
    table["n_positive"] = table["n_positive"].astype(int)
    table["n"] = table["n"].astype(int)
    table.index.name = "column"
    return table


def _best_threshold(y: np.ndarray, p: np.ndarray, metric: str, default: float) -> float:
    if len(np.unique(y)) < 2:
        return default
    if metric == "f1":
        prec, rec, thr = precision_recall_curve(y, p)
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(prec + rec > 0, 2 * prec * rec / (prec + rec), 0.0)
        values, cands = f1[:-1], thr  # the last (precision=1, recall=0) point has no threshold
    elif metric == "youden":
        fpr, tpr, thr = roc_curve(y, p)
        finite = np.isfinite(thr)
        values, cands = (tpr - fpr)[finite], thr[finite]
    elif metric == "accuracy":
        cands = np.unique(p)
        values = np.array([accuracy_score(y, (p >= c).astype(int)) for c in cands])
    else:
        raise ValueError(f"unknown metric {metric!r}; use 'f1', 'youden' or 'accuracy'")
    best = np.flatnonzero(np.isclose(values, values.max()))
    # Ties: the candidate closest to the default keeps thresholds stable across runs.
    return float(cands[best[np.argmin(np.abs(cands[best] - default))]])


def search_thresholds(y_true: pd.DataFrame, probs: pd.DataFrame, metric: str = "f1",
                      default: float = 0.5, columns: Sequence[str] | None = None) -> pd.Series:
    """Per-finding threshold (predict 1 when prob >= threshold) maximising ``metric``.

    Run it on a validation split, then apply to the test split with
    :func:`apply_thresholds`. Findings with one class keep ``default``.
    """
    yt = _frame(y_true, columns).astype(int)
    pr = _frame(probs, list(yt.columns)).astype(float)
    return pd.Series({c: _best_threshold(yt[c].to_numpy(), pr[c].to_numpy(), metric, default)
                      for c in yt.columns}, name="threshold")


def apply_thresholds(probs: pd.DataFrame, thresholds: Mapping[str, float] | pd.Series | float
                     ) -> pd.DataFrame:
    pr = to_columns(probs)
    cols = [c for c in pr.columns if c in FINDING_COLUMNS]
    out = pd.DataFrame(index=pr.index)
    for c in cols:
        thr = thresholds if isinstance(thresholds, (int, float)) else thresholds[c]
        out[c] = (pr[c].astype(float) >= thr).astype(int)
    return out


def compare(metrics_a: pd.DataFrame, metrics_b: pd.DataFrame,
            metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """``metrics_a - metrics_b`` per finding (e.g. refined minus machine-translated)."""
    common = [i for i in metrics_a.index if i in metrics_b.index]
    delta = metrics_a.loc[common, list(metrics)] - metrics_b.loc[common, list(metrics)]
    delta.insert(0, "finding", metrics_a.loc[common, "finding"])
    return delta


def format_delta(delta: pd.DataFrame, decimals: int = 3) -> pd.DataFrame:
    """Signed strings as in the paper's delta table (+0.008, -0.143, 0.000)."""
    def fmt(v: float) -> str:
        if pd.isna(v):
            return "nan"
        r = round(float(v), decimals)
        return f"{0.0:.{decimals}f}" if r == 0 else f"{r:+.{decimals}f}"

    out = delta.copy()
    for col in out.columns:
        if col != "finding":
            out[col] = out[col].map(fmt)
    return out


def plot_f1_bars(metrics_a: pd.DataFrame, metrics_b: pd.DataFrame,
                 labels: Sequence[str], path: str | Path, metric: str = "f1") -> Path:
    """Grouped horizontal bars of ``metric`` per finding for two systems (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [i for i in metrics_a.index if i not in AVERAGE_ROWS and i in metrics_b.index]
    names = [metrics_a.loc[i, "finding"] for i in rows]
    y = np.arange(len(rows))
    height = 0.4
    fig, ax = plt.subplots(figsize=(8, 0.38 * len(rows) + 1.5))
    ax.barh(y - height / 2, metrics_a.loc[rows, metric].astype(float), height, label=labels[0])
    ax.barh(y + height / 2, metrics_b.loc[rows, metric].astype(float), height, label=labels[1])
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.05)
    ax.set_xlabel(METRIC_LABELS.get(metric, metric))
    ax.legend(loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=120)
    plt.close(fig)
    return path


def _markdown(df: pd.DataFrame, decimals: int = 3) -> str:
    # Plain pipe table: pandas.to_markdown needs the optional `tabulate` package.
    def cell(v: object) -> str:
        if isinstance(v, (float, np.floating)):
            return "nan" if np.isnan(v) else f"{v:.{decimals}f}"
        return str(v).replace("|", "\\|")

    header = [df.index.name or ""] + [str(c) for c in df.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for idx, row in df.iterrows():
        lines.append("| " + " | ".join([cell(idx)] + [cell(v) for v in row]) + " |")
    return "\n".join(lines)


def write_report(tables: Mapping[str, pd.DataFrame], out_dir: str | Path,
                 title: str = "Finding classification") -> dict[str, Path]:
    """Each table as ``<name>.csv`` plus one ``report.md`` with every table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    parts = [f"# {title}", ""]
    for name, df in tables.items():
        csv_path = out / f"{name}.csv"
        df.to_csv(csv_path)
        written[name] = csv_path
        parts += [f"## {name}", "", _markdown(df), ""]
    md = out / "report.md"
    md.write_text("\n".join(parts), encoding="utf-8")
    written["report.md"] = md
    return written
