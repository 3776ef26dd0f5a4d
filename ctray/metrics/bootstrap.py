"""Non-parametric bootstrap: percentile CIs and paired two-sided p-values.

Resampling is expressed as a (B, n) matrix of case multiplicities, so one draw can
be shared by several statistics and by two predictors (the paired test), and so
vectorised statistics can consume it as weights. With ``groups`` the clusters
(e.g. reports) are resampled and every case inherits its cluster's multiplicity.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence

import numpy as np

DEFAULT_N_BOOTSTRAP = 2000


def rng_for(seed: int, key: str = "") -> np.random.Generator:
    """A Generator seeded by ``seed`` and a stable key, so that each table row gets
    its own stream and adding rows does not shift the draws of the others."""
    return np.random.default_rng([int(seed), zlib.crc32(key.encode())])


def resample_counts(n: int, n_bootstrap: int = DEFAULT_N_BOOTSTRAP,
                    rng: np.random.Generator | int | None = 0,
                    groups: Sequence | None = None) -> np.ndarray:
    """(n_bootstrap, n) multiplicities of each case in each bootstrap sample."""
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    if groups is None:
        codes, n_units = np.arange(n), n
    else:
        if len(groups) != n:
            raise ValueError("groups must have one entry per case")
        _, codes = np.unique(np.asarray(groups), return_inverse=True)
        n_units = int(codes.max()) + 1 if n else 0
    draws = rng.integers(0, n_units, size=(n_bootstrap, n_units))
    offsets = np.arange(n_bootstrap)[:, None] * n_units
    unit_counts = np.bincount((draws + offsets).ravel(),
                              minlength=n_bootstrap * n_units).reshape(n_bootstrap, n_units)
    return unit_counts[:, codes]


def counts_to_indices(counts_row: np.ndarray) -> np.ndarray:
    """Case indices of one bootstrap sample, for statistics that need arrays."""
    return np.repeat(np.arange(counts_row.size), counts_row)


def bootstrap_samples(statistic: Callable[..., float], *arrays,
                      counts: np.ndarray) -> np.ndarray:
    """``statistic(*resampled_arrays)`` for each row of ``counts``."""
    arrays = [np.asarray(a) for a in arrays]
    return np.array([statistic(*(a[idx] for a in arrays))
                     for idx in map(counts_to_indices, counts)], dtype=float)


def percentile_ci(samples, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval; NaN samples (statistic undefined) are ignored."""
    alpha = (1.0 - level) / 2.0
    lo, hi = np.nanquantile(np.asarray(samples, dtype=float), [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def summarize(estimate: float, samples, level: float = 0.95) -> dict[str, float]:
    lo, hi = percentile_ci(samples, level)
    return {"estimate": float(estimate), "ci_low": lo, "ci_high": hi,
            "bootstrap_median": float(np.nanmedian(samples))}


def bootstrap_ci(statistic: Callable[..., float], *arrays,
                 n_bootstrap: int = DEFAULT_N_BOOTSTRAP, seed: int = 0,
                 groups: Sequence | None = None, level: float = 0.95) -> dict[str, float]:
    """Point estimate, percentile CI and bootstrap median of ``statistic(*arrays)``."""
    n = len(arrays[0])
    counts = resample_counts(n, n_bootstrap, np.random.default_rng(seed), groups)
    samples = bootstrap_samples(statistic, *arrays, counts=counts)
    return summarize(statistic(*arrays), samples, level)


def paired_pvalue(samples_a, samples_b) -> float:
    """Two-sided p-value for "a and b score the same" from paired bootstrap samples.

    The share of samples where a beats b (ties count half), folded and doubled: the
    test used by the LEAVS and MAPLEZ papers.
    """
    diff = np.asarray(samples_a, dtype=float) - np.asarray(samples_b, dtype=float)
    diff = diff[~np.isnan(diff)]
    if diff.size == 0:
        return float("nan")
    share = (np.sum(diff > 0) + 0.5 * np.sum(diff == 0)) / diff.size
    return float(min(1.0, 2.0 * min(share, 1.0 - share)))


def paired_bootstrap_test(statistic: Callable[..., float], y_true, pred_a, pred_b,
                          n_bootstrap: int = DEFAULT_N_BOOTSTRAP, seed: int = 0,
                          groups: Sequence | None = None,
                          level: float = 0.95) -> dict[str, float]:
    """Compare two predictors of the same cases on the same bootstrap draws.

    Returns both scores, the difference a - b with its CI, and the two-sided p-value.
    """
    y_true, pred_a, pred_b = map(np.asarray, (y_true, pred_a, pred_b))
    counts = resample_counts(len(y_true), n_bootstrap, np.random.default_rng(seed), groups)
    samples_a = bootstrap_samples(statistic, y_true, pred_a, counts=counts)
    samples_b = bootstrap_samples(statistic, y_true, pred_b, counts=counts)
    score_a, score_b = statistic(y_true, pred_a), statistic(y_true, pred_b)
    lo, hi = percentile_ci(samples_a - samples_b, level)
    return {"score_a": float(score_a), "score_b": float(score_b),
            "difference": float(score_a - score_b), "ci_low": lo, "ci_high": hi,
            "p_value": paired_pvalue(samples_a, samples_b)}
