"""Grounding metrics of ReXGroundingCT: per-finding Dice, HIT rates, size groups,
focal / non-focal split, bootstrap CIs, the Table-4-style summary and Figure 2.

Definitions (paper §5.1-5.2):

* Dice per finding (one mask per sentence), averaged over findings.
* HIT@t: share of findings whose Dice is **above** t (5% and 10%).
* Size: GT voxels / scan voxels, both counted after isotropic resampling (done
  upstream; these functions take the counts). Groups over the distribution of
  findings: small ≤ 50th percentile < medium ≤ 75th percentile < large.
* Focality by category code (Figure S9): category 1 (1a-1f) is "typically
  non-focal", category 2 (2a-2h) "typically focal". The paper's §3.5 swaps the two
  names in one sentence, but the schema, Table 3 counts (non-focal = 1,039 of
  4,776 = 22%) and Table 4 agree on this reading. The category schema is the
  grounding task's (``ctray.tasks.grounding.categories``): these functions take a
  ``focality`` column, or a ``focality_of(category)`` function to derive it, so the
  metrics layer does not depend on a task package. Other categories are out of
  the benchmark's scope and are left out of the Table-4 numbers.
* 95% percentile bootstrap CIs over findings, 1,000 resamples, seeded.

Input frames have one row per (method, finding) with at least ``dice`` and
``category``; ``method`` is optional.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from monai.metrics import compute_dice

from ctray.metrics.bootstrap import bootstrap_ci, rng_for

FOCAL = "focal"
NON_FOCAL = "non-focal"
FocalityOf = Callable[[str], "str | None"]

N_BOOTSTRAP = 1000
HIT_THRESHOLDS = (0.05, 0.10)
SIZE_GROUPS = ("small", "medium", "large")


def dice_score(pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor) -> float:
    """Dice of one binary prediction against one GT mask (same shape).

    Both empty counts as 1.0 and an empty GT with a non-empty prediction as 0.0
    (``ignore_empty=False``), so a finding never drops out of the average.
    """
    p = torch.as_tensor(np.asarray(pred) > 0)
    g = torch.as_tensor(np.asarray(gt) > 0)
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {tuple(p.shape)} != GT shape {tuple(g.shape)}")
    return float(compute_dice(p[None, None].float(), g[None, None].float(),
                              include_background=True, ignore_empty=False)[0, 0])


def hit_rate(dice: Sequence[float] | np.ndarray, threshold: float = 0.05) -> float:
    """Share of findings with Dice strictly above ``threshold``."""
    d = np.asarray(dice, dtype=float)
    return float(np.mean(d > threshold)) if d.size else float("nan")


def finding_size(gt_voxels, scan_voxels):
    """GT voxels / scan voxels (after isotropic resampling upstream); scalar or array."""
    gt = np.asarray(gt_voxels, dtype=float)
    scan = np.asarray(scan_voxels, dtype=float)
    if np.any(scan <= 0):
        raise ValueError("scan_voxels must be positive")
    out = gt / scan
    return float(out) if out.ndim == 0 else out


def size_groups(sizes: Sequence[float] | np.ndarray) -> np.ndarray:
    """small / medium / large by the 50th and 75th percentiles of ``sizes`` itself."""
    s = np.asarray(sizes, dtype=float)
    if s.size == 0:
        return np.array([], dtype=object)
    p50, p75 = np.percentile(s, [50, 75])
    return np.where(s <= p50, "small", np.where(s <= p75, "medium", "large")).astype(object)


def add_groups(df: pd.DataFrame, focality_of: FocalityOf | None = None) -> pd.DataFrame:
    """Copy of ``df`` with ``focality`` (kept when present, else ``focality_of`` applied
    to ``category``) and, when ``size`` or ``gt_voxels`` + ``scan_voxels`` are present,
    ``size`` and ``size_group``.

    Size percentiles are taken over distinct findings (``finding_id`` when
    present), so the number of methods in the frame does not shift them.
    """
    out = df.copy()
    if "focality" not in out and "category" in out:
        if focality_of is None:
            raise ValueError("need a 'focality' column or a focality_of(category) function")
        out["focality"] = [None if c is None or (isinstance(c, float) and np.isnan(c))
                           else focality_of(c) for c in out["category"]]
    if "size" not in out and {"gt_voxels", "scan_voxels"} <= set(out.columns):
        out["size"] = finding_size(out["gt_voxels"].to_numpy(), out["scan_voxels"].to_numpy())
    if "size" in out:
        ref = out.drop_duplicates("finding_id") if "finding_id" in out else out
        p50, p75 = np.percentile(ref["size"].to_numpy(dtype=float), [50, 75])
        s = out["size"].to_numpy(dtype=float)
        out["size_group"] = np.where(s <= p50, "small", np.where(s <= p75, "medium", "large"))
    return out


def mean_ci(values: Sequence[float] | np.ndarray, n_bootstrap: int = N_BOOTSTRAP,
            seed: int = 0, key: str = "") -> dict[str, float]:
    """Mean with a 95% percentile bootstrap CI (``estimate``, ``ci_low``, ``ci_high``)."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return {"estimate": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
    # One stream per (seed, key): adding a row or method does not move the others' CIs.
    row_seed = int(rng_for(seed, key).integers(2**31))
    res = bootstrap_ci(np.mean, v, n_bootstrap=n_bootstrap, seed=row_seed)
    return {k: res[k] for k in ("estimate", "ci_low", "ci_high")}


def _methods(df: pd.DataFrame, method_col: str):
    if method_col in df:
        return list(df.groupby(method_col, sort=False))
    return [("all", df)]


def grounding_table(df: pd.DataFrame, method_col: str = "method",
                    n_bootstrap: int = N_BOOTSTRAP, seed: int = 0,
                    focality_of: FocalityOf | None = None) -> pd.DataFrame:
    """Table 4: per method, mean Dice on non-focal, focal and all lung findings, and
    HIT@5% / HIT@10%, each with ``_ci_low`` / ``_ci_high`` columns.

    Also ``n`` (in-scope findings), ``share_non_focal`` / ``share_focal`` and
    ``n_out_of_scope`` (rows whose category is neither 1x nor 2x, left out).
    """
    df = add_groups(df, focality_of)
    rows = []
    for method, g in _methods(df, method_col):
        scope = g[g["focality"].isin([FOCAL, NON_FOCAL])]
        dice = scope["dice"].to_numpy(dtype=float)
        row: dict = {method_col: method, "n": len(scope),
                     "n_out_of_scope": len(g) - len(scope)}
        for name, values in (
                ("non_focal", scope.loc[scope["focality"] == NON_FOCAL, "dice"]),
                ("focal", scope.loc[scope["focality"] == FOCAL, "dice"]),
                ("average", dice)):
            stats = mean_ci(values, n_bootstrap, seed, f"{method}/{name}")
            row.update({name: stats["estimate"], f"{name}_ci_low": stats["ci_low"],
                        f"{name}_ci_high": stats["ci_high"]})
        for t in HIT_THRESHOLDS:
            name = f"hit{round(t * 100)}"
            stats = mean_ci((dice > t).astype(float), n_bootstrap, seed, f"{method}/{name}")
            row.update({name: stats["estimate"], f"{name}_ci_low": stats["ci_low"],
                        f"{name}_ci_high": stats["ci_high"]})
        n = max(len(scope), 1)
        row["share_non_focal"] = float((scope["focality"] == NON_FOCAL).sum() / n)
        row["share_focal"] = float((scope["focality"] == FOCAL).sum() / n)
        rows.append(row)
    return pd.DataFrame(rows).set_index(method_col)


def format_grounding_table(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Paper-style strings: ``"0.239 [0.201–0.280]"`` under ``"Non-focal (22%)"`` etc."""
    def cell(r, name):
        return (f"{r[name]:.{digits}f} [{r[name + '_ci_low']:.{digits}f}–"
                f"{r[name + '_ci_high']:.{digits}f}]")

    first = table.iloc[0] if len(table) else None
    nf = f"Non-focal ({first['share_non_focal']:.0%})" if first is not None else "Non-focal"
    fo = f"Focal ({first['share_focal']:.0%})" if first is not None else "Focal"
    cols = {nf: "non_focal", fo: "focal", "Average": "average", "HIT5%": "hit5",
            "HIT10%": "hit10"}
    return pd.DataFrame({label: [cell(r, name) for _, r in table.iterrows()]
                         for label, name in cols.items()}, index=table.index)


def group_table(df: pd.DataFrame, by: str, method_col: str = "method",
                n_bootstrap: int = N_BOOTSTRAP, seed: int = 0,
                focality_of: FocalityOf | None = None) -> pd.DataFrame:
    """Mean Dice with CI per ``by`` group (``category``, ``focality``, ``size_group``)
    and method: the data behind the paper's Figures 2 and 3."""
    df = add_groups(df, focality_of)
    if by not in df:
        raise KeyError(f"column {by!r} not available (need category / size inputs)")
    rows = []
    for method, g in _methods(df, method_col):
        for key, sub in g.dropna(subset=[by]).groupby(by, sort=True):
            stats = mean_ci(sub["dice"], n_bootstrap, seed, f"{method}/{by}/{key}")
            rows.append({method_col: method, by: key, "n": len(sub), "dice": stats["estimate"],
                         "ci_low": stats["ci_low"], "ci_high": stats["ci_high"]})
    return pd.DataFrame(rows, columns=[method_col, by, "n", "dice", "ci_low", "ci_high"])


def plot_per_category(df: pd.DataFrame, path: str | os.PathLike, method_col: str = "method",
                      n_bootstrap: int = N_BOOTSTRAP, seed: int = 0,
                      focality_of: FocalityOf | None = None,
                      category_name: Callable[[str], str] | None = None) -> str:
    """Figure 2: mean Dice per finding subcategory (bars per method, 95% CI whiskers) → PNG;
    ``category_name(code)`` labels the bars (default: the code alone)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = group_table(df, "category", method_col, n_bootstrap, seed, focality_of)
    cats = sorted(table["category"].unique(), key=lambda c: (len(c.rstrip("abcdefghijk")), c))
    methods = list(dict.fromkeys(table[method_col]))
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(cats))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(cats) + 2), 4.5))
    for i, m in enumerate(methods):
        t = table[table[method_col] == m].set_index("category").reindex(cats)
        err = np.vstack([t["dice"] - t["ci_low"], t["ci_high"] - t["dice"]])
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, t["dice"], width, yerr=err,
               capsize=2, label=str(m))
    labels = []
    for c in cats:
        try:
            name = category_name(c) if category_name else None
        except KeyError:
            name = None
        labels.append(f"{c}\n{textwrap.fill(name, 14)}" if name else str(c))
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel("Dice")
    ax.set_ylim(0, 1)
    ax.set_title("Dice per finding category (95% bootstrap CI)")
    if len(methods) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)
