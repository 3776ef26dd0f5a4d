"""LEAVS evaluation: metric helpers, label schema, voting, and the paper reproduction."""

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest

from conftest import shared_file
from ctray.metrics.bootstrap import (bootstrap_ci, paired_bootstrap_test, paired_pvalue,
                                     resample_counts)
from ctray.metrics.classification import (binary_metrics, binary_metrics_from_counts,
                                          kendall_tau_b, weighted_confusion_counts)
from ctray.tasks.leavs import schema
from ctray.tasks.leavs.evaluation import (HumanAnnotations, evaluate_leavs, majority_vote,
                                          normalize_report_id, urgency_ground_truth)

# ---------------------------------------------------------------- binary metrics


def test_binary_metrics_match_hand_counts():
    y_true = [1, 1, 1, 1, 0, 0, 0, 0, 0, 1]
    y_pred = [1, 1, 0, 1, 1, 0, 0, 0, 1, 1]
    pairs = list(zip(y_true, y_pred))
    tp, fp = pairs.count((1, 1)), pairs.count((0, 1))
    fn, tn = pairs.count((1, 0)), pairs.count((0, 0))
    assert (tp, fp, fn, tn) == (4, 2, 1, 3)  # the arrays above, counted by eye
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))

    got = binary_metrics(np.array(y_true), np.array(y_pred))

    assert got["precision"] == pytest.approx(tp / (tp + fp))
    assert got["recall"] == pytest.approx(tp / (tp + fn))
    assert got["specificity"] == pytest.approx(tn / (tn + fp))
    assert got["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert got["mcc"] == pytest.approx(mcc)
    assert (got["n"], got["n_positive"]) == (10, 5)


def test_binary_metrics_degenerate_cases_are_zero():
    got = binary_metrics([1, 0, 1, 0], [0, 0, 0, 0])
    assert got["precision"] == got["recall"] == got["f1"] == got["mcc"] == 0.0
    assert got["specificity"] == 1.0
    with pytest.raises(ValueError):
        binary_metrics([0, 2], [0, 1])


def test_vectorised_metrics_agree_with_sklearn_on_weighted_resamples():
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 2, 60)
    y_pred = np.where(rng.random(60) < 0.8, y_true, 1 - y_true)
    counts = resample_counts(60, 50, rng)
    batched = binary_metrics_from_counts(*weighted_confusion_counts(y_true, y_pred, counts))
    for b in range(50):
        idx = np.repeat(np.arange(60), counts[b])
        ref = binary_metrics(y_true[idx], y_pred[idx])
        for m in ("f1", "precision", "recall", "specificity", "mcc"):
            assert batched[m][b] == pytest.approx(ref[m])


def test_vectorised_metrics_zero_division_matches_sklearn():
    ref = binary_metrics([0, 0, 0], [0, 0, 0])
    got = binary_metrics_from_counts(0, 0, 0, 3)
    for m in ("f1", "precision", "recall", "specificity", "mcc"):
        assert float(got[m]) == pytest.approx(ref[m])


def _naive_tau_b(x, y):
    concordant = discordant = ties_x = ties_y = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        if dx == 0 and dy == 0:
            continue
        if dx == 0:
            ties_x += 1
        elif dy == 0:
            ties_y += 1
        elif dx == dy:
            concordant += 1
        else:
            discordant += 1
    n_x = concordant + discordant + ties_y  # pairs not tied in x
    n_y = concordant + discordant + ties_x
    return (concordant - discordant) / math.sqrt(n_x * n_y)


def test_kendall_tau_b_matches_pair_counting_with_ties():
    x = [0, 1, 1, 2, 3, 3, 3, 0.5]
    y = [1, 1, 2, 2, 3, 2, 3, 0]
    assert kendall_tau_b(x, y) == pytest.approx(_naive_tau_b(x, y))
    assert math.isnan(kendall_tau_b([1, 1, 1], [0, 1, 2]))


# --------------------------------------------------------------------- bootstrap


def test_resample_counts_cases_and_clusters():
    counts = resample_counts(7, 300, 1)
    assert counts.shape == (300, 7) and (counts.sum(axis=1) == 7).all()
    assert (resample_counts(7, 300, 1) == counts).all()
    assert not (resample_counts(7, 300, 2) == counts).all()

    groups = np.array(["a", "a", "a", "b", "c", "c", "d"])
    counts = resample_counts(7, 300, 1, groups=groups)
    # Every case of a cluster carries that cluster's multiplicity.
    assert (counts[:, 0] == counts[:, 1]).all() and (counts[:, 1] == counts[:, 2]).all()
    assert (counts[:, 4] == counts[:, 5]).all()
    cluster_draws = counts[:, [0, 3, 4, 6]].sum(axis=1)
    assert (cluster_draws == 4).all()


def test_bootstrap_ci_of_mean_matches_normal_theory():
    x = np.random.default_rng(0).normal(10.0, 2.0, 400)
    ci = bootstrap_ci(np.mean, x, n_bootstrap=2000, seed=0)
    half_width = 1.96 * x.std(ddof=1) / math.sqrt(len(x))
    assert ci["estimate"] == pytest.approx(x.mean())
    assert ci["ci_low"] < x.mean() < ci["ci_high"]
    assert (ci["ci_high"] - ci["ci_low"]) / 2 == pytest.approx(half_width, rel=0.1)


def test_paired_pvalue_folding_and_ties():
    assert paired_pvalue([1, 1, 1, 1], [1, 1, 1, 1]) == 1.0
    assert paired_pvalue([2, 2, 2, 0], [1, 1, 1, 1]) == pytest.approx(0.5)
    assert paired_pvalue([1, 2, 3], [0, 0, 0]) == 0.0


def test_paired_bootstrap_test_detects_a_better_predictor():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 300)
    good = np.where(rng.random(300) < 0.95, y, 1 - y)
    poor = np.where(rng.random(300) < 0.70, y, 1 - y)
    def accuracy(t, p):
        return float(np.mean(t == p))

    res = paired_bootstrap_test(accuracy, y, good, poor, n_bootstrap=2000, seed=0)
    assert res["difference"] == pytest.approx(accuracy(y, good) - accuracy(y, poor))
    assert res["ci_low"] > 0 and res["p_value"] < 0.01
    same = paired_bootstrap_test(accuracy, y, good, good, n_bootstrap=200, seed=0)
    assert same["p_value"] == 1.0 and same["ci_low"] == same["ci_high"] == 0.0


# ------------------------------------------------------------------------ schema


def test_schema_matches_release_spellings():
    assert schema.FINDING_TYPES[0] == "normal" and schema.FINDING_TYPES[-1] == "focal"
    assert len(schema.FINDING_TYPES) == 11 and len(schema.ORGANS) == 9
    assert len(schema.MERGED_TYPES) == 7
    merged_parts = sorted(p for parts in schema.MERGED_TYPES.values() for p in parts)
    assert set(merged_parts) <= set(schema.FINDING_TYPES)
    assert "right kidney" in schema.ORGANS and "large bowel" in schema.ORGANS


@pytest.mark.parametrize("codes, merged", [
    ((0, 0), 0),     # both explicitly absent
    ((0, -2), -2),   # one not mentioned: the union is not known to be absent
    ((-2, -3), -3),
    ((-3, -1), -1),
    ((-1, 0), -1),
    ((1, -1), 1),
])
def test_merge_certainty_is_a_logical_or(codes, merged):
    assert schema.merge_certainty(codes) == merged
    assert schema.merge_certainty_array(np.array([codes]))[0] == merged


def test_merge_label_row_and_binarize():
    row = dict.fromkeys(schema.FINDING_TYPES, schema.Certainty.NOT_MENTIONED)
    row.update(postsurgical=0, absent=-2, enlarged=1, atrophy=0, focal=-1, quality=-3)
    merged = schema.merge_label_row(row)
    assert merged["postsurgical_absent"] == -2
    assert merged["enlarged_atrophy"] == 1
    assert merged["focal"] == -1 and merged["quality"] == -3
    positives = {k for k, v in merged.items() if schema.is_positive(v)}
    assert positives == {"enlarged_atrophy", "focal"}
    assert list(schema.binarize(np.array([1, 0, -1, -2, -3]))) == [1, 0, 1, 0, 0]
    assert schema.merge_urgency([None, float("nan"), 2, schema.URGENCY_MISSING]) == 2.0
    assert schema.merge_urgency([None, schema.URGENCY_MISSING]) is None


# ----------------------------------------------------------------- voting, ids


def test_majority_vote_and_tie_handling():
    idx = pd.MultiIndex.from_tuples(
        [(r, lab) for r in ("r1", "r2", "r3", "r4") for lab in (0, 1, 2)],
        names=["report_id", "labeler"])
    labels = pd.DataFrame({
        "two_of_three": [1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 1, 1],
        "one_of_three": [1, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0],
        # r1: 1 vs 0 with one annotator missing -> tie -> positive; r2: 0/1 missing
        "with_missing": [1, 0, np.nan, np.nan, 0, np.nan, np.nan, np.nan, np.nan, 1, 1, 0],
    }, index=idx, dtype=float)

    vote = majority_vote(labels)

    assert list(vote["two_of_three"]) == [1, 1, 0, 1]
    assert list(vote["one_of_three"]) == [0, 0, 0, 0]
    assert vote.loc["r1", "with_missing"] == 1  # tie counts as positive
    assert vote.loc["r2", "with_missing"] == 0
    assert np.isnan(vote.loc["r3", "with_missing"])  # nobody annotated
    assert vote.loc["r4", "with_missing"] == 1


def test_report_ids_of_both_release_files_agree():
    pred = "./imagesVa/amos_5001.nii.gz_./imagesVa/amos_5001.nii.gz"
    human = "amos_5001.nii.gz.txt_amos_5001.nii.gz.txt"
    assert normalize_report_id(pred) == normalize_report_id(human) == "amos_5001.nii.gz"
    assert normalize_report_id("amos_0029.nii.gz.txt") == "amos_0029.nii.gz"


def _tiny_annotations(cells):
    """3 annotators x 2 reports, every cell 0/NaN except ``cells``."""
    idx = pd.MultiIndex.from_product([["r1", "r2"], [0, 1, 2]], names=["report_id", "labeler"])
    cols = pd.MultiIndex.from_product([schema.ORGANS, schema.ANNOTATED_TYPES])
    labels = pd.DataFrame(0.0, index=idx, columns=cols)
    urgency = pd.DataFrame(np.nan, index=idx, columns=cols)
    for (report, labeler, organ, t), u in cells.items():
        labels.loc[(report, labeler), (organ, t)] = 1
        urgency.loc[(report, labeler), (organ, t)] = u
    return HumanAnnotations(labels, urgency)


def test_urgency_ground_truth_needs_all_annotators_and_handles_missing_urgency():
    human = _tiny_annotations({
        # r1: all three mark a liver finding, one without urgency (-> 0)
        ("r1", 0, "liver", "focal"): 3, ("r1", 1, "liver", "focal"): 2,
        ("r1", 2, "liver", "postsurgical_absent"): np.nan,
        # r2: only two annotators mark the liver -> undefined
        ("r2", 0, "liver", "focal"): 1, ("r2", 1, "liver", "diffuse"): 1,
        # kidneys: r1 annotators 0, 1 give urgency 0, annotator 2 none
        ("r1", 0, "right kidney", "focal"): 0, ("r1", 1, "left kidney", "focal"): 0,
        ("r1", 2, "left kidney", "postsurgical_absent"): np.nan,
        ("r2", 0, "left kidney", "focal"): 3, ("r2", 1, "left kidney", "focal"): 1,
        ("r2", 2, "right kidney", "diffuse"): 2,
    })
    liver = urgency_ground_truth(human, ("liver",))
    assert liver["r1"] == pytest.approx(5 / 3) and np.isnan(liver["r2"])

    kidneys = ("right kidney", "left kidney")
    zero = urgency_ground_truth(human, kidneys, missing_urgency="zero")
    release = urgency_ground_truth(human, kidneys, missing_urgency="release")
    assert zero["r1"] == 0.0 and zero["r2"] == pytest.approx(2.0)
    # The released code counts the missing urgency as -1 here: mean < 0 -> dropped.
    assert np.isnan(release["r1"]) and release["r2"] == pytest.approx(2.0)


# ------------------------------------------------------------ paper reproduction

# Published figures (LEAVS paper, Tables 1, 2, 4 and 5).
TABLE1_MICRO = {"n": 2000, "n_positive": 394, "f1": .892, "f1_ci": (.869, .913),
                "precision": .865, "recall": .921, "specificity": .965, "mcc": .865}
TABLE2_MICRO = {"n": 1200, "n_positive": 381, "f1": .961, "f1_ci": (.946, .973),
                "precision": .936, "recall": .987, "specificity": .969, "mcc": .942}
TABLE4_MACRO = {"tau_b": .582, "ci": (.503, .655)}
TABLE4_ROWS = {"liver": (102, 52, .612), "gallbladder": (50, 37, .635),
               "kidneys": (84, 43, .632), "bowels": (45, 35, .460)}
# organ, type, N+, F1, precision, recall, specificity, MCC (bootstrap medians)
TABLE1_ROWS = [
    ("liver", "diffuse", 31, .925, .884, .970, .976, .912),
    ("liver", "focal", 91, .963, .929, 1.00, .936, .932),
    ("gallbladder", "diffuse", 36, .817, .903, .750, .982, .788),
    ("gallbladder", "focal", 27, .732, .588, .966, .896, .708),
    ("gallbladder", "postsurgical_absent", 11, .957, 1.00, .917, 1.00, .955),
    ("spleen", "enlarged_atrophy", 21, .978, .957, 1.00, .994, .975),
    ("right kidney", "focal", 62, .912, .935, .889, .972, .874),
    ("left kidney", "focal", 57, .901, .862, .948, .939, .863),
    ("large bowel", "focal", 38, .759, .735, .794, .933, .702),
    ("large bowel", "postsurgical_absent", 20, .977, 1.00, .955, 1.00, .974),
]
TABLE5_HUMANS = {"H1": (54.3, 20.8, 23.9, 1.0), "H2": (65.1, 10.5, 24.1, 0.3),
                 "H3": (35.3, 36.3, 27.0, 1.4), "H4": (36.2, 37.1, 22.6, 4.1),
                 "H5": (82.4, 8.2, 6.3, 3.1)}
TOL, CI_TOL = 0.005, 0.01


@pytest.fixture(scope="module")
def leavs_run(tmp_path_factory):
    predictions = shared_file("leavs", "parsing_results_llm_test_amos.csv")
    annotations = shared_file("leavs", "amos_test_annotations.csv")
    out = tmp_path_factory.mktemp("eval-leavs")
    headline = evaluate_leavs(predictions, annotations, out, n_bootstrap=2000, seed=0)
    return headline, out


def _assert_binary_micro(got, published):
    assert (got["n"], got["n_positive"]) == (published["n"], published["n_positive"])
    for m in ("f1", "precision", "recall", "specificity", "mcc"):
        assert got[m] == pytest.approx(published[m], abs=TOL), m
    assert got["f1_ci_low"] == pytest.approx(published["f1_ci"][0], abs=CI_TOL)
    assert got["f1_ci_high"] == pytest.approx(published["f1_ci"][1], abs=CI_TOL)


@pytest.mark.shared_data
def test_reproduces_table1_micro(leavs_run):
    headline, _ = leavs_run
    assert headline["n_reports"] == 200
    _assert_binary_micro(headline["table1_micro"], TABLE1_MICRO)


@pytest.mark.shared_data
def test_reproduces_table1_rows_as_bootstrap_medians(leavs_run):
    _, out = leavs_run
    table = pd.read_csv(out / "table1_finding_types.csv").set_index(["organ", "type"])
    assert sorted(table.index) == sorted((r[0], r[1]) for r in TABLE1_ROWS)
    for organ, t, n_pos, *published in TABLE1_ROWS:
        row = table.loc[(organ, t)]
        assert (row["n"], row["n_positive"]) == (200, n_pos)
        for m, value in zip(("f1", "precision", "recall", "specificity", "mcc"), published):
            # published values are rounded to 3 decimals: allow that half-unit too
            assert row[f"{m}_bootstrap_median"] == pytest.approx(value, abs=TOL + 5e-4), \
                (organ, t, m)


@pytest.mark.shared_data
def test_reproduces_table2_micro(leavs_run):
    headline, _ = leavs_run
    _assert_binary_micro(headline["table2_micro"], TABLE2_MICRO)


@pytest.mark.shared_data
def test_reproduces_table4_urgency(leavs_run):
    headline, out = leavs_run
    macro = headline["table4_macro"]
    assert macro["organs"] == ["liver", "gallbladder", "kidneys", "bowels"]
    assert macro["tau_b"] == pytest.approx(TABLE4_MACRO["tau_b"], abs=TOL)
    assert macro["tau_b_ci_low"] == pytest.approx(TABLE4_MACRO["ci"][0], abs=CI_TOL)
    assert macro["tau_b_ci_high"] == pytest.approx(TABLE4_MACRO["ci"][1], abs=CI_TOL)
    rows = pd.read_csv(out / "table4_urgency.csv").set_index("organ")
    for organ, (n, off_mode, tau) in TABLE4_ROWS.items():
        assert (rows.loc[organ, "n"], rows.loc[organ, "n_off_mode"]) == (n, off_mode)
        assert rows.loc[organ, "tau_b_bootstrap_median"] == pytest.approx(tau, abs=TOL)


@pytest.mark.shared_data
def test_missing_urgency_quirk_only_changes_joined_organs(leavs_run):
    _, out = leavs_run
    release = pd.read_csv(out / "table4_urgency.csv").set_index("organ")
    zero = pd.read_csv(out / "table4_urgency_missing_as_zero.csv").set_index("organ")
    for organ in ("liver", "gallbladder"):
        assert release.loc[organ, "tau_b"] == zero.loc[organ, "tau_b"]
    for organ in ("kidneys", "bowels"):
        assert zero.loc[organ, "n"] > release.loc[organ, "n"]


@pytest.mark.shared_data
def test_reproduces_table5_human_prevalence_and_writes_outputs(leavs_run):
    _, out = leavs_run
    table = pd.read_csv(out / "table5_urgency_prevalence.csv").set_index("labeler")
    for labeler, published in TABLE5_HUMANS.items():
        got = [table.loc[labeler, f"pct_{k}"] for k in range(4)]
        assert got == pytest.approx(published, abs=0.051), labeler
    for name in ("tables.md", "metrics.json", "table1_finding_types.csv",
                 "table2_any_abnormality.csv", "table4_urgency.csv"):
        assert (out / name).stat().st_size > 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["table1_micro"]["n"] == 2000 and len(metrics["table1"]) == 10
    assert "| micro | micro | 2000 | 394 |" in (out / "tables.md").read_text()
