"""eval-cxr: weighted F1 against hand-computed values, p-values against independent
computations, and the job end to end (tables, figures, several labelers)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from ctray.tasks.cxr import evaluation as ev
from ctray.tasks.cxr.schema import OBSERVATIONS

NAN = math.nan


def test_weighted_f1_hand_computed():
    gold = pd.Series([1, 1, 0, -1, NAN, 0], dtype=float)
    pred = pd.Series([1, 0, 0, NAN, 1, 0], dtype=float)
    # positive extraction: TP 1 (row 0), FP 1 (row 4, gold blank), FN 1 (row 1) -> F1 0.5
    # negative extraction: TP 2, FP 1 (row 1) -> P 2/3, R 1 -> F1 0.8
    # uncertain extraction: the one gold -1 predicted blank -> F1 0
    assert ev.class_f1(gold, pred) == pytest.approx({1: 0.5, 0: 0.8, -1: 0.0})
    # weights = gold support 2, 2, 1
    assert ev.weighted_f1(gold, pred) == pytest.approx((0.5 * 2 + 0.8 * 2 + 0.0 * 1) / 5)
    # Table 2: positive and negative only (the uncertain row is "other")
    assert ev.weighted_f1(gold, pred, ev.POS_NEG) == pytest.approx((0.5 * 2 + 0.8 * 2) / 4)


def test_blank_gold_predicted_blank_is_not_scored_and_no_support_is_nan():
    gold = pd.Series([1, NAN, NAN], dtype=float)
    assert ev.weighted_f1(gold, pd.Series([1, NAN, NAN])) == 1.0
    # a blank gold predicted positive is a false positive of the positive task
    assert ev.weighted_f1(gold, pd.Series([1, 1, NAN])) == pytest.approx(2 / 3)
    # gold only blank (or, for Table 2, only uncertain): undefined
    assert math.isnan(ev.weighted_f1(pd.Series([NAN, NAN]), pd.Series([1.0, NAN])))
    assert math.isnan(ev.weighted_f1(pd.Series([-1.0, NAN]), pd.Series([-1.0, NAN]), ev.POS_NEG))


def test_f1_table_average_skips_undefined_observations():
    gold = pd.DataFrame({o: [1.0, 0.0] for o in OBSERVATIONS})
    gold["Fracture"] = NAN
    pred = gold.copy()
    pred["Cardiomegaly"] = [0.0, 0.0]  # positive F1 0, negative F1 2/3 -> weighted 1/3
    table = ev.f1_table(gold, {"a": pred})
    assert math.isnan(table.loc["Fracture", "a"])
    assert table.loc["Cardiomegaly", "a"] == pytest.approx(1 / 3)
    assert table.loc["Average", "a"] == pytest.approx((12 + 1 / 3) / 13)


def _exact_wilcoxon_p(diff: np.ndarray) -> float:
    """Two-sided exact signed-rank p-value by enumerating all sign assignments."""
    ranks = pd.Series(np.abs(diff)).rank().to_numpy()
    observed = ranks[diff > 0].sum()
    total = ranks.sum()
    stats_all = [sum(r for r, s in zip(ranks, signs) if s)
                 for signs in itertools.product((0, 1), repeat=len(diff))]
    extreme = min(observed, total - observed)
    return float(np.mean([min(s, total - s) <= extreme + 1e-12 for s in stats_all]))


def test_paired_tests_match_independent_computations():
    from scipy import stats

    rng = np.random.default_rng(3)
    a = rng.uniform(0.8, 0.98, 14)
    b = a - rng.uniform(-0.01, 0.04, 14)  # distinct, no ties, no zero differences
    table = pd.DataFrame({"A": a, "B": b}, index=list(OBSERVATIONS))
    table.loc["Average"] = table.mean()
    row = ev.paired_tests(table).iloc[0]
    d = a - b
    t = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
    assert row["t_test_p"] == pytest.approx(2 * stats.t.sf(abs(t), len(d) - 1), rel=1e-9)
    assert row["wilcoxon_p"] == pytest.approx(_exact_wilcoxon_p(d), rel=1e-9)
    assert row["observations"] == 14 and row["comparison"] == "A vs B"


def test_paired_tests_identical_labelers_give_nan_not_an_error():
    table = pd.DataFrame({"A": np.linspace(0.8, 0.9, 14), "B": np.linspace(0.8, 0.9, 14)},
                         index=list(OBSERVATIONS))
    row = ev.paired_tests(table).iloc[0]
    assert math.isnan(row["t_test_p"]) and math.isnan(row["wilcoxon_p"])


def _write(path, frame: pd.DataFrame, id_name: str) -> str:
    out = frame.copy()
    out.insert(0, id_name, [f"r{i}" for i in range(len(out))])
    out.to_csv(path, index=False, float_format="%.1f")
    return str(path)


def test_cxr_eval_job_three_labelers(tmp_path):
    import matplotlib.image as mpimg

    from ctray.tasks.cxr.eval_job import CxrEvalConfig, run_cxr_eval

    rng = np.random.default_rng(0)
    values = np.array([1.0, 0.0, -1.0, NAN])
    gold = pd.DataFrame(rng.choice(values, size=(40, 14), p=[0.3, 0.4, 0.1, 0.2]),
                        columns=list(OBSERVATIONS))
    mask = rng.random(gold.shape) < 0.15
    noisy = pd.DataFrame(np.where(mask, rng.choice(values, size=gold.shape), gold.to_numpy()),
                         columns=list(OBSERVATIONS))
    blank = gold.copy()
    blank.iloc[:, :] = NAN
    paths = {"gold": _write(tmp_path / "gold.csv", gold, "uid"),
             "perfect": _write(tmp_path / "perfect.csv", gold, "report_id"),
             "noisy": _write(tmp_path / "noisy.csv", noisy, "Reports"),
             "blank": _write(tmp_path / "blank.csv", blank.iloc[:30], "uid")}
    cfg = CxrEvalConfig.model_validate({
        "run": {"output": str(tmp_path / "eval")}, "gold": {"path": paths["gold"]},
        "labelers": [{"path": paths["perfect"], "label": "perfect"}, paths["noisy"],
                     {"path": paths["blank"], "label": "none"}], "allow_partial": True})
    summary = run_cxr_eval(cfg)
    assert summary["labelers"] == ["perfect", "noisy", "none"]
    assert summary["reports"] == 30  # the ids every labeler has (allow_partial)
    assert summary["coverage"]["per_labeler"] == {"perfect": 40, "noisy": 40, "none": 30}
    assert summary["mean_weighted_f1"]["perfect"] == pytest.approx(1.0)
    assert summary["mean_weighted_f1"]["none"] == 0.0
    ids = [f"r{i}" for i in range(30)]
    expected = ev.f1_table(gold.set_axis([f"r{i}" for i in range(40)]).loc[ids],
                           {"noisy": noisy.set_axis([f"r{i}" for i in range(40)]).loc[ids]})
    assert summary["mean_weighted_f1"]["noisy"] == pytest.approx(expected.loc["Average", "noisy"])
    table1 = pd.read_csv(tmp_path / "eval" / "table1_weighted_f1.csv", index_col=0)
    assert list(table1.columns) == ["perfect", "noisy", "none"]
    assert list(table1.index) == [*OBSERVATIONS, "Average"]
    tests = pd.read_csv(tmp_path / "eval" / "table3_pvalues.csv")
    assert list(tests["comparison"]) == ["perfect vs noisy", "perfect vs none", "noisy vs none"]
    assert tests.loc[1, "t_test_p"] < 0.001  # F1 1.0 vs 0.0 on every observation
    for name in ("figure2_f1_bars.png", "figure3_f1_abs_diff.png"):
        image = mpimg.imread(tmp_path / "eval" / name)
        assert image.ndim == 3 and image.shape[0] > 100
    diffs = pd.read_csv(tmp_path / "eval" / "f1_abs_differences.csv", index_col=0)
    assert diffs.shape == (14, 3)
    assert (tmp_path / "eval" / "report.md").read_text().count("| No Finding") >= 2


def test_cxr_eval_rejects_bad_cells_and_missing_columns(tmp_path):
    from ctray.errors import UserError
    from ctray.tasks.cxr.eval_job import CxrEvalConfig, run_cxr_eval

    gold = pd.DataFrame({o: [1.0] for o in OBSERVATIONS})
    good = _write(tmp_path / "g.csv", gold, "uid")
    bad = gold.copy().astype(object)
    bad["Edema"] = ["2.0"]
    cfg = CxrEvalConfig.model_validate({"run": {"output": str(tmp_path / "o")},
                                        "gold": {"path": good},
                                        "labelers": [_write(tmp_path / "b.csv", bad, "uid")]})
    with pytest.raises(UserError, match="Edema"):
        run_cxr_eval(cfg)
    cfg = CxrEvalConfig.model_validate({"run": {"output": str(tmp_path / "o")},
                                        "gold": {"path": good},
                                        "labelers": [_write(tmp_path / "m.csv",
                                                            gold.drop(columns=["Fracture"]),
                                                            "uid")]})
    with pytest.raises(UserError, match="Fracture"):
        run_cxr_eval(cfg)
    with pytest.raises(UserError, match="at least one labeler"):
        run_cxr_eval(CxrEvalConfig.model_validate({"run": {"output": str(tmp_path / "o")}}))
