"""The LLM CXR labeler paper's evaluation (Abdullah & Kim, JMIR Med Inform 2025).

Per observation, a labeler's predictions are scored against gold labels as three
one-vs-rest extraction tasks (positive, negative and uncertain extraction: the named
class is the positive class, every other class, blank included, is "other"), and the
per-class F1 scores are averaged weighted by the class's gold support ("weighted F1",
Table 1). Table 2 does the same over the positive and negative classes only.
How blanks count (our reading of the paper, which follows CheXbert's evaluation):
blank is a class of its own that is never scored but is never dropped either, so a
gold-positive report predicted blank is a missed positive (a false negative of the
positive task) and a gold-blank report predicted negative is a false positive of the
negative task. Likewise in Table 2, an uncertain label (gold or predicted) is "other".
That is exactly ``sklearn.metrics.f1_score(y_true, y_pred, labels=[...],
average="weighted")`` with blank (and, for Table 2, uncertain) left out of ``labels``.
An observation with no gold support in the scored classes has no defined weighted F1:
it is NaN and left out of the mean (the paper's 687-report test set has support for
every observation; small dev sets may not).

Table 3: paired t-test and Wilcoxon signed-rank test over the observations' F1
values of two labelers (scipy.stats.ttest_rel / wilcoxon).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ctray.tasks.cxr.schema import OBSERVATIONS

BLANK_CODE = 9  # stands for blank in the integer label arrays (never a scored class)
ALL_LEVELS = (1, 0, -1)  # Table 1: positive, negative, uncertain
POS_NEG = (1, 0)  # Table 2


def encode(values: pd.Series) -> np.ndarray:
    """1.0/0.0/-1.0/NaN -> 1/0/-1/BLANK_CODE as integers."""
    arr = pd.to_numeric(values, errors="raise").to_numpy(dtype=float)
    return np.where(np.isnan(arr), BLANK_CODE, arr).astype(int)


def weighted_f1(gold: pd.Series, pred: pd.Series, levels=ALL_LEVELS) -> float:
    """Support-weighted mean of the one-vs-rest F1 of each class in ``levels``."""
    from sklearn.metrics import f1_score

    y_true, y_pred = encode(gold), encode(pred)
    if not np.isin(y_true, levels).any():
        return math.nan
    return float(f1_score(y_true, y_pred, labels=list(levels), average="weighted",
                          zero_division=0))


def class_f1(gold: pd.Series, pred: pd.Series, levels=ALL_LEVELS) -> dict[int, float]:
    """One-vs-rest F1 per class (positive / negative / uncertain extraction)."""
    from sklearn.metrics import f1_score

    scores = f1_score(encode(gold), encode(pred), labels=list(levels), average=None,
                      zero_division=0)
    return {lev: float(s) for lev, s in zip(levels, scores)}


def support(gold: pd.DataFrame) -> pd.DataFrame:
    """Gold counts per observation and class (positive, negative, uncertain, blank)."""
    rows = {}
    for obs in OBSERVATIONS:
        codes = encode(gold[obs])
        rows[obs] = {"positive": int((codes == 1).sum()), "negative": int((codes == 0).sum()),
                     "uncertain": int((codes == -1).sum()), "blank": int((codes == BLANK_CODE).sum())}
    return pd.DataFrame.from_dict(rows, orient="index")


def f1_table(gold: pd.DataFrame, preds: dict[str, pd.DataFrame], levels=ALL_LEVELS) -> pd.DataFrame:
    """Rows: the 14 observations and "Average"; columns: labelers. ``preds`` frames are
    aligned with ``gold`` (same index)."""
    table = pd.DataFrame({name: [weighted_f1(gold[o], p[o], levels) for o in OBSERVATIONS]
                          for name, p in preds.items()}, index=list(OBSERVATIONS))
    table.loc["Average"] = table.mean(axis=0, skipna=True)
    return table


def paired_tests(table: pd.DataFrame) -> pd.DataFrame:
    """Paired t-test and Wilcoxon signed-rank p-values between every two labelers, over
    the observations where both F1 values are defined."""
    from scipy import stats

    per_obs = table.drop(index="Average", errors="ignore")
    rows = []
    for a, b in itertools.combinations(per_obs.columns, 2):
        pair = per_obs[[a, b]].dropna()
        diff = pair[a] - pair[b]
        row = {"comparison": f"{a} vs {b}", "observations": len(pair),
               "mean_difference": float(diff.mean()) if len(pair) else math.nan,
               "t_test_p": math.nan, "wilcoxon_p": math.nan}
        if len(pair) >= 2 and diff.abs().sum() > 0:
            row["t_test_p"] = float(stats.ttest_rel(pair[a], pair[b]).pvalue)
            row["wilcoxon_p"] = float(stats.wilcoxon(pair[a], pair[b]).pvalue)
        rows.append(row)
    return pd.DataFrame(rows)


def abs_differences(table: pd.DataFrame) -> pd.DataFrame:
    """|F1(A) - F1(B)| per observation for every pair of labelers (Figure 3's cells)."""
    per_obs = table.drop(index="Average", errors="ignore")
    return pd.DataFrame({f"{a} vs {b}": (per_obs[a] - per_obs[b]).abs()
                         for a, b in itertools.combinations(per_obs.columns, 2)})


def plot_grouped_bars(table: pd.DataFrame, path: Path, title: str) -> Path:
    """Figure 2: one group of bars per observation, one bar per labeler."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_obs = table.drop(index="Average", errors="ignore")
    n = len(per_obs.columns)
    x = np.arange(len(per_obs))
    width = 0.8 / max(n, 1)
    fig, ax = plt.subplots(figsize=(max(8, 1.0 * len(per_obs)), 4.5))
    for k, name in enumerate(per_obs.columns):
        ax.bar(x + (k - (n - 1) / 2) * width, per_obs[name].to_numpy(dtype=float), width,
               label=name)
    ax.set_xticks(x)
    ax.set_xticklabels(per_obs.index, rotation=45, ha="right")
    ax.set_ylabel("weighted F1")
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    # Outside the axes: inside, it hid the bars of the last observations.
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_difference_heatmap(diffs: pd.DataFrame, path: Path, title: str) -> Path:
    """Figure 3: rows observations, columns labeler pairs, cells |F1 difference|."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = diffs.to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(5.0 + 1.6 * max(1, diffs.shape[1]), 0.45 * len(diffs) + 2.0))
    image = ax.imshow(np.ma.masked_invalid(data), cmap="viridis", aspect="auto")
    top = np.nanmax(data) if np.isfinite(data).any() else 1.0
    ax.set_xticks(range(diffs.shape[1]))
    ax.set_xticklabels(diffs.columns, rotation=30, ha="right")
    ax.set_yticks(range(len(diffs)))
    ax.set_yticklabels(diffs.index)
    for i, j in itertools.product(range(data.shape[0]), range(data.shape[1])):
        if not math.isnan(data[i, j]):
            dark = data[i, j] < 0.6 * top  # light text on the dark end of viridis
            ax.text(j, i, f"{data[i, j]:.3f}", ha="center", va="center",
                    color="w" if dark else "k", fontsize=8)
    fig.colorbar(image, ax=ax, label="|F1 difference|")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
