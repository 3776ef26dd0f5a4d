"""LEAVS labeler evaluation against the AMOS-MM human annotations (paper Tables 1, 2, 4, 5).

Reproduces the evaluation of Bigolin Lanfredi et al., "LEAVS: An LLM-based Labeler
for Abdominal CT Supervision", as implemented by the authors' released scripts
(rsummers11/LEAVS ``src/create_raw_table.py`` and helpers). The choices, each
checked against the published numbers (see docs/leavs_reproduction.md):

* Binarisation: present (1) and radiologist-unsure (-1) are positive; absent (0),
  not mentioned (-2) and ambiguous/broad-area (-3) are negative, for predictions
  and ground truth alike.
* Finding types are merged to the annotation layout (Postsurgical+Absent, Size =
  Enlarged+Atrophy, ...) with :func:`schema.merge_certainty` (logical OR).
* Ground truth is the per-cell majority vote of the three annotators, taken after
  each annotator's labels were merged (so "any abnormality" is voted on, not
  OR-ed from per-type votes).
* Only organ x type rows (Table 1) or organs (Table 2, 4) with more than 10
  positive cases (urgency: more than 10 cases off the mode) are reported; micro
  rows pool the cases of the reported rows. For Table 1 that is 10 organ x type
  rows x 200 reports = N 2000; for Table 2 six organ groups x 200 = N 1200.
* Confidence intervals: percentile bootstrap (2,000 samples) that resamples the
  cases of each row i.i.d., as the released code does (also for micro rows). Report-
  clustered intervals for the micro rows are given as a sensitivity analysis.
* Published point estimates are bootstrap medians; we report the full-sample
  estimate and keep the bootstrap median in the CSVs (they differ by < .01).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from ctray.metrics.bootstrap import (DEFAULT_N_BOOTSTRAP, bootstrap_samples, percentile_ci,
                                     resample_counts, rng_for, summarize)
from ctray.metrics.classification import (BINARY_METRICS, binary_metrics,
                                          binary_metrics_from_counts, kendall_tau_b,
                                          weighted_confusion_counts)
from ctray.tasks.leavs import schema

MIN_POSITIVES = 10  # the paper reports rows with more than 10 positive cases
ID_COLUMN = "subjectid_studyid"
MissingUrgency = Literal["release", "zero"]


# --------------------------------------------------------------------------- loading

def normalize_report_id(raw: str) -> str:
    """``./imagesVa/amos_0001.nii.gz_./imagesVa/amos_0001.nii.gz`` -> ``amos_0001.nii.gz``.

    Both release files build ``subjectid_studyid`` by doubling the file name, with
    different folder prefixes and ``.txt`` suffixes; this is the common key.
    """
    s = str(raw)
    half = len(s) // 2
    if len(s) % 2 == 1 and s[half] == "_" and s[:half] == s[half + 1:]:
        s = s[:half]
    return s.rsplit("/", 1)[-1].removesuffix(".txt")


@dataclass(frozen=True)
class LeavsOutputs:
    """LEAVS output: index report id, columns (organ, finding type) of ``FINDING_TYPES``.

    ``labels`` holds certainty codes; ``urgency`` holds 0-3 and NaN where LEAVS gave none.
    """
    labels: pd.DataFrame
    urgency: pd.DataFrame


@dataclass(frozen=True)
class HumanAnnotations:
    """Human labels: index (report id, labeler), columns (organ, annotated merged type).

    ``labels`` holds 0/1; ``urgency`` holds 0-3 and NaN where the annotator gave none.
    """
    labels: pd.DataFrame
    urgency: pd.DataFrame


def load_predictions(path: str | Path) -> LeavsOutputs:
    """Read a LEAVS output CSV (one row per report x organ x type_annotation)."""
    df = pd.read_csv(path)
    missing = {ID_COLUMN, "organ", "type_annotation", *schema.FINDING_TYPES} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    unknown = set(df["organ"]) - set(schema.ORGANS)
    if unknown:
        raise ValueError(f"{path}: unknown organs {sorted(unknown)}")
    df = df.assign(report_id=df[ID_COLUMN].map(normalize_report_id))
    if df.duplicated(["report_id", "organ", "type_annotation"]).any():
        raise ValueError(f"{path}: duplicate report x organ x type_annotation rows")

    def wide(kind: str) -> pd.DataFrame:
        part = df[df["type_annotation"] == kind].set_index(["report_id", "organ"])
        out = part[list(schema.FINDING_TYPES)].unstack("organ")
        out.columns = out.columns.swaplevel(0, 1)
        cols = pd.MultiIndex.from_product([schema.ORGANS, schema.FINDING_TYPES])
        return out.reindex(columns=cols).sort_index()

    labels = wide("labels")
    if labels.isna().any().any():
        raise ValueError(f"{path}: some report lacks a labels row for some organ")
    urgency = wide("urgency").reindex(labels.index)
    urgency = urgency.where(urgency != schema.URGENCY_MISSING)
    return LeavsOutputs(labels.astype(int), urgency.astype(float))


def load_annotations(path: str | Path) -> HumanAnnotations:
    """Read the human annotation CSV (one row per report x labeler x type_annotation)."""
    df = pd.read_csv(path)
    cols = [(o, t) for o in schema.ORGANS for t in schema.ANNOTATED_TYPES]
    names = [f"{o}_{t}" for o, t in cols]
    missing = {ID_COLUMN, "labeler", "type_annotation", *names} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    df = df.assign(report_id=df[ID_COLUMN].map(normalize_report_id))

    def wide(kind: str) -> pd.DataFrame:
        part = df[df["type_annotation"] == kind].set_index(["report_id", "labeler"])[names]
        if part.index.duplicated().any():
            raise ValueError(f"{path}: duplicate report x labeler {kind} rows")
        part.columns = pd.MultiIndex.from_tuples(cols)
        return part.sort_index().astype(float)

    labels = wide("labels")
    if not labels.isin([0, 1]).where(labels.notna(), True).all().all():
        raise ValueError(f"{path}: human labels must be 0/1")
    return HumanAnnotations(labels, wide("urgency").reindex(labels.index))


# ------------------------------------------------------------------------- labels

def majority_vote(labels: pd.DataFrame, level: str = "report_id") -> pd.DataFrame:
    """Per-cell majority of 0/1 annotations over the rows that share ``level``.

    Positive when at least half of the *available* (non-missing) annotations are
    positive, so a tie (possible only with an even number of available annotators)
    counts as positive, like the released code's ``sum >= n / 2``. Cells no
    annotator labelled stay NaN. With the three complete annotations per report of
    the AMOS-MM release no tie can occur.
    """
    grouped_pos = (labels == 1).groupby(level=level).sum()
    available = labels.notna().groupby(level=level).sum()
    vote = (grouped_pos >= available / 2).astype(float)
    return vote.where(available > 0)


def merge_columns(codes: pd.DataFrame, columns: list[tuple[str, str]]) -> pd.Series:
    """Certainty of the union of ``columns`` (see :func:`schema.merge_certainty`)."""
    return pd.Series(schema.merge_certainty_array(codes[columns].to_numpy(), axis=1),
                     index=codes.index)


def union_binary(labels: pd.DataFrame, columns: list[tuple[str, str]]) -> pd.Series:
    """1 if any of the 0/1 ``columns`` is 1; NaN where all are missing (human labels)."""
    return labels[columns].max(axis=1, skipna=True)


def merge_urgency_columns(urgency: pd.DataFrame, columns: list[tuple[str, str]]) -> pd.Series:
    """Most urgent value among ``columns``; NaN when none has an urgency."""
    return urgency[columns].max(axis=1, skipna=True)


def _components(organs, merged_types) -> list[tuple[str, str]]:
    return [(o, c) for o in organs for t in merged_types for c in schema.MERGED_TYPES[t]]


def _annotated(organs, merged_types) -> list[tuple[str, str]]:
    return [(o, t) for o in organs for t in merged_types]


# ------------------------------------------------------------------ binary tables

def _binary_row(y_true, y_pred, *, key: str, seed: int, n_bootstrap: int,
                groups=None) -> dict:
    """Metrics of one table row with their bootstrap CIs and medians."""
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    point = binary_metrics(y_true, y_pred)
    counts = resample_counts(len(y_true), n_bootstrap, rng_for(seed, key), groups)
    samples = binary_metrics_from_counts(*weighted_confusion_counts(y_true, y_pred, counts))
    row = {"n": point["n"], "n_positive": point["n_positive"]}
    for m in BINARY_METRICS:
        s = summarize(point[m], samples[m])
        row[m], row[f"{m}_ci_low"], row[f"{m}_ci_high"] = s["estimate"], s["ci_low"], s["ci_high"]
        row[f"{m}_bootstrap_median"] = s["bootstrap_median"]
    return row


def _binary_table(cases: list[tuple[dict, pd.Series, pd.Series]], *, seed: int,
                  n_bootstrap: int, min_positives: int) -> tuple[pd.DataFrame, dict]:
    """Rows with more than ``min_positives`` positives, plus their pooled micro row."""
    rows, kept = [], []
    for meta, y_true, y_pred in cases:
        if y_true.isna().any():
            raise ValueError(f"missing ground truth for {meta}")
        if int(y_true.sum()) <= min_positives:
            continue
        key = "/".join(meta.values())
        rows.append({**meta, **_binary_row(y_true, y_pred, key=key, seed=seed,
                                           n_bootstrap=n_bootstrap)})
        kept.append((y_true, y_pred))
    if not kept:
        raise ValueError("no row has enough positive cases")
    y_true = pd.concat([k[0] for k in kept])
    y_pred = pd.concat([k[1] for k in kept])
    micro = _binary_row(y_true, y_pred, key="micro", seed=seed, n_bootstrap=n_bootstrap)
    clustered = _binary_row(y_true, y_pred, key="micro-by-report", seed=seed,
                            n_bootstrap=n_bootstrap, groups=y_true.index.to_numpy())
    micro["by_report_ci"] = {m: [clustered[f"{m}_ci_low"], clustered[f"{m}_ci_high"]]
                             for m in BINARY_METRICS}
    return pd.DataFrame(rows), micro


def finding_type_table(pred: LeavsOutputs, human: HumanAnnotations, *, seed: int = 0,
                       n_bootstrap: int = DEFAULT_N_BOOTSTRAP,
                       min_positives: int = MIN_POSITIVES) -> tuple[pd.DataFrame, dict]:
    """Table 1: per organ x annotated type against the majority vote, and micro."""
    truth = majority_vote(human.labels)
    cases = []
    for organ in schema.ORGANS:
        for t in schema.ANNOTATED_TYPES:
            y_true = truth[(organ, t)]
            codes = merge_columns(pred.labels, _components([organ], [t])).reindex(y_true.index)
            if codes.isna().any():
                raise ValueError(f"LEAVS output lacks some annotated reports for {organ}")
            cases.append(({"organ": organ, "type": t}, y_true.astype(int),
                          pd.Series(schema.binarize(codes), index=codes.index)))
    return _binary_table(cases, seed=seed, n_bootstrap=n_bootstrap, min_positives=min_positives)


def any_abnormality_table(pred: LeavsOutputs, human: HumanAnnotations, *, seed: int = 0,
                          n_bootstrap: int = DEFAULT_N_BOOTSTRAP,
                          min_positives: int = MIN_POSITIVES) -> tuple[pd.DataFrame, dict]:
    """Table 2: "any abnormality" per organ group (kidneys and bowels joined), and micro."""
    cases = []
    for group, organs in schema.ORGAN_GROUPS.items():
        per_annotator = union_binary(human.labels,
                                     _annotated(organs, schema.ABNORMALITY_TYPES))
        y_true = majority_vote(per_annotator.to_frame("v"))["v"]
        codes = merge_columns(pred.labels, _components(organs, schema.ABNORMALITY_TYPES))
        codes = codes.reindex(y_true.index)
        cases.append(({"organ": group}, y_true.astype(int),
                      pd.Series(schema.binarize(codes), index=codes.index)))
    return _binary_table(cases, seed=seed, n_bootstrap=n_bootstrap, min_positives=min_positives)


# ------------------------------------------------------------------------ urgency

def urgency_ground_truth(human: HumanAnnotations, organs: tuple[str, ...],
                         missing_urgency: MissingUrgency = "release") -> pd.Series:
    """Mean annotator urgency of the most urgent abnormality in ``organs`` per report.

    Defined only where every annotator marked the organ (group) abnormal. An
    annotator who did so without giving an urgency (mostly postsurgical/absent
    findings) counts as urgency 0 with ``"zero"``. ``"release"`` reproduces the
    released evaluation code: 0 for single organs but -1 for joined organ pairs
    (a no-op ``None if x == -1 else x`` in its ``convert_join_organs.py`` leaves the
    -1 placeholder in place), and reports whose mean is then negative are dropped.
    """
    cols = _annotated(organs, schema.ABNORMALITY_TYPES)
    abnormal = union_binary(human.labels, cols) == 1
    urgency = merge_urgency_columns(human.urgency, cols)
    placeholder = -1.0 if (missing_urgency == "release" and len(organs) > 1) else 0.0
    urgency = urgency.fillna(placeholder)
    frame = pd.DataFrame({"abnormal": abnormal, "urgency": urgency})
    by_report = frame.groupby(level="report_id")
    all_abnormal = by_report["abnormal"].all()
    mean = by_report["urgency"].mean().where(all_abnormal)
    return mean.where(mean >= 0)


def urgency_prediction(pred: LeavsOutputs, organs: tuple[str, ...]) -> pd.Series:
    """LEAVS's most urgent abnormality in ``organs``; NaN where it found none."""
    return merge_urgency_columns(pred.urgency, _components(organs, schema.ABNORMALITY_TYPES))


def _off_mode(values: np.ndarray) -> int:
    """N - N_mode: cases whose ground truth differs from the most common value."""
    rounded = pd.Series(np.round(values, 6))
    return int(len(rounded) - rounded.value_counts().max()) if len(rounded) else 0


def urgency_table(pred: LeavsOutputs, human: HumanAnnotations, *, seed: int = 0,
                  n_bootstrap: int = DEFAULT_N_BOOTSTRAP, min_off_mode: int = MIN_POSITIVES,
                  missing_urgency: MissingUrgency = "release") -> tuple[pd.DataFrame, dict]:
    """Table 4: Kendall tau-b per organ group on max urgency, and the macro average.

    Cases need both a ground-truth urgency and a LEAVS urgency. The macro CI averages
    the organs' (independent) bootstrap samples draw by draw, as the released code.
    """
    rows, samples = [], []
    for group, organs in schema.ORGAN_GROUPS.items():
        truth = urgency_ground_truth(human, organs, missing_urgency)
        guess = urgency_prediction(pred, organs).reindex(truth.index)
        keep = truth.notna() & guess.notna()
        y, p = truth[keep].to_numpy(), guess[keep].to_numpy()
        if _off_mode(y) <= min_off_mode:
            continue
        counts = resample_counts(len(y), n_bootstrap, rng_for(seed, f"urgency/{group}"))
        s = bootstrap_samples(kendall_tau_b, y, p, counts=counts)
        summary = summarize(kendall_tau_b(y, p), s)
        rows.append({"organ": group, "n": len(y), "n_off_mode": _off_mode(y),
                     "tau_b": summary["estimate"], "tau_b_ci_low": summary["ci_low"],
                     "tau_b_ci_high": summary["ci_high"],
                     "tau_b_bootstrap_median": summary["bootstrap_median"]})
        samples.append(s)
    if not rows:
        raise ValueError("no organ has enough urgency cases")
    table = pd.DataFrame(rows)
    macro_samples = np.nanmean(np.vstack(samples), axis=0)
    lo, hi = percentile_ci(macro_samples)
    macro = {"tau_b": float(table["tau_b"].mean()), "tau_b_ci_low": lo, "tau_b_ci_high": hi,
             "tau_b_bootstrap_median": float(np.nanmedian(macro_samples)),
             "organs": list(table["organ"])}
    return table, macro


def _prevalence(values: np.ndarray) -> dict:
    values = values[~np.isnan(values)]
    out = {"n": int(values.size)}
    for level in schema.Urgency:
        out[f"pct_{int(level)}"] = float(np.mean(values == level) * 100) if values.size else 0.0
    return out


def urgency_prevalence_table(pred: LeavsOutputs, human: HumanAnnotations) -> pd.DataFrame:
    """Table 5: share of each urgency level among all urgency outputs of each labeler.

    Humans: every urgency cell they filled (organ x annotated type); labeler ids 0-4
    are the paper's H1-H5 (this reproduces their rows exactly). LEAVS: its urgencies
    merged into the same organ x annotated-type layout.
    """
    rows = []
    merged = [merge_urgency_columns(pred.urgency, _components([o], [t]))
              for o in schema.ORGANS for t in schema.ANNOTATED_TYPES]
    rows.append({"labeler": "LEAVS", **_prevalence(np.concatenate([m.to_numpy() for m in merged]))})
    for labeler, part in human.urgency.groupby(level="labeler"):
        rows.append({"labeler": f"H{int(labeler) + 1}",
                     **_prevalence(part.to_numpy(dtype=float).ravel())})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------- report

def _fmt(x: float) -> str:
    s = f"{x:.3f}"
    return s[1:] if s.startswith("0.") else ("-" + s[2:] if s.startswith("-0.") else s)


def _fmt_ci(row, m: str) -> str:
    return f"{_fmt(row[m])} ({_fmt(row[f'{m}_ci_low'])}, {_fmt(row[f'{m}_ci_high'])})"


def _binary_markdown(table: pd.DataFrame, micro: dict, label_cols: list[str]) -> list[str]:
    head = label_cols + ["N", "N+", "F1 (95% CI)", "Pre", "Rec", "Spe", "MCC"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in table.iterrows():
        labels = [schema.ORGAN_ABBREVIATIONS.get(r["organ"], r["organ"])]
        if "type" in table.columns:
            labels.append(schema.MERGED_TYPE_NAMES[r["type"]])
        vals = [str(r["n"]), str(r["n_positive"]), _fmt_ci(r, "f1")]
        vals += [_fmt(r[m]) for m in ("precision", "recall", "specificity", "mcc")]
        lines.append("| " + " | ".join(labels + vals) + " |")
    vals = [str(micro["n"]), str(micro["n_positive"]), _fmt_ci(micro, "f1")]
    vals += [_fmt(micro[m]) for m in ("precision", "recall", "specificity", "mcc")]
    lines.append("| " + " | ".join(["micro"] * len(label_cols) + vals) + " |")
    lo, hi = micro["by_report_ci"]["f1"]
    lines.append("")
    lines.append(f"Micro F1 95% CI when resampling reports instead of cases: "
                 f"({_fmt(lo)}, {_fmt(hi)}).")
    return lines


def _urgency_markdown(table: pd.DataFrame, macro: dict) -> list[str]:
    lines = ["| Organ | N | N - N_mode | tau_b (95% CI) |", "|---|---|---|---|"]
    for _, r in table.iterrows():
        lines.append(f"| {schema.ORGAN_ABBREVIATIONS[r['organ']]} | {r['n']} | "
                     f"{r['n_off_mode']} | {_fmt_ci(r, 'tau_b')} |")
    lines.append(f"| Macro | - | - | {_fmt_ci(macro, 'tau_b')} |")
    return lines


def write_report(out_dir: Path, results: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    results["table1"].to_csv(out_dir / "table1_finding_types.csv", index=False)
    results["table2"].to_csv(out_dir / "table2_any_abnormality.csv", index=False)
    results["table4"].to_csv(out_dir / "table4_urgency.csv", index=False)
    results["table4_zero"].to_csv(out_dir / "table4_urgency_missing_as_zero.csv", index=False)
    results["table5"].to_csv(out_dir / "table5_urgency_prevalence.csv", index=False)
    md = ["# LEAVS evaluation on AMOS-MM (200 reports)", "",
          f"Bootstrap: {results['n_bootstrap']} samples, seed {results['seed']}; "
          "cases resampled within each row.", "",
          "## Table 1: finding types vs human majority vote", ""]
    md += _binary_markdown(results["table1"], results["table1_micro"], ["Organ", "Type"])
    md += ["", "## Table 2: any abnormality per organ", ""]
    md += _binary_markdown(results["table2"], results["table2_micro"], ["Organ"])
    md += ["", "## Table 4: urgency (Kendall tau-b, maximum urgency per organ)", ""]
    md += _urgency_markdown(results["table4"], results["table4_macro"])
    md += ["", "Same, counting an abnormal annotation without urgency as 0 for joined "
           "organs too (the released code uses -1 there):", ""]
    md += _urgency_markdown(results["table4_zero"], results["table4_zero_macro"])
    md += ["", "## Table 5: urgency prevalence", "",
           "| Labeler | N | %0 | %1 | %2 | %3 |", "|---|---|---|---|---|---|"]
    for _, r in results["table5"].iterrows():
        md.append(f"| {r['labeler']} | {r['n']} | " +
                  " | ".join(f"{r[f'pct_{k}']:.1f}%" for k in range(4)) + " |")
    (out_dir / "tables.md").write_text("\n".join(md) + "\n")
    json_out = {k: v for k, v in results.items() if not isinstance(v, pd.DataFrame)}
    for k in ("table1", "table2", "table4", "table4_zero", "table5"):
        json_out[k] = results[k].to_dict(orient="records")
    (out_dir / "metrics.json").write_text(json.dumps(json_out, indent=2, default=float))


def evaluate_leavs(predictions_csv: str | Path, annotations_csv: str | Path,
                   out_dir: str | Path, n_bootstrap: int = DEFAULT_N_BOOTSTRAP,
                   seed: int = 0) -> dict:
    """Evaluate LEAVS outputs against the human annotations and write the tables.

    Writes ``tables.md``, one CSV per table and ``metrics.json`` into ``out_dir``;
    returns the headline numbers (micro rows of Tables 1 and 2, macro of Table 4).
    """
    pred, human = load_predictions(predictions_csv), load_annotations(annotations_csv)
    reports = human.labels.index.get_level_values("report_id").unique()
    missing = reports.difference(pred.labels.index)
    if len(missing):
        raise ValueError(f"LEAVS output lacks {len(missing)} annotated reports, "
                         f"e.g. {list(missing[:3])}")
    kw = {"seed": seed, "n_bootstrap": n_bootstrap}
    t1, t1_micro = finding_type_table(pred, human, **kw)
    t2, t2_micro = any_abnormality_table(pred, human, **kw)
    t4, t4_macro = urgency_table(pred, human, **kw)
    t4z, t4z_macro = urgency_table(pred, human, missing_urgency="zero", **kw)
    results = {"n_reports": int(len(reports)), "n_bootstrap": n_bootstrap, "seed": seed,
               "table1": t1, "table1_micro": t1_micro, "table2": t2, "table2_micro": t2_micro,
               "table4": t4, "table4_macro": t4_macro, "table4_zero": t4z,
               "table4_zero_macro": t4z_macro, "table5": urgency_prevalence_table(pred, human)}
    write_report(Path(out_dir), results)
    return {"n_reports": results["n_reports"], "table1_micro": t1_micro,
            "table2_micro": t2_micro, "table4_macro": t4_macro,
            "table4_macro_missing_as_zero": t4z_macro}
