"""The paper's translation evaluation: pair hypotheses with references, score them
(BLEU, ROUGE), summarize and render the report (the ``eval-translate`` job's work)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ctray.errors import UserError
from ctray.io.manifest import write_job_manifest
from ctray.metrics.translation import ROUGE_TYPES, PairScorer, corpus_bleu
from ctray.pipeline.stage import LIGHT_TASK

if TYPE_CHECKING:  # the job module imports this one
    from ctray.tasks.translate.eval_job import TranslateEvalConfig, TranslationInput

log = logging.getLogger(__name__)
METRICS = ("bleu",) + ROUGE_TYPES
METRIC_LABELS = {"bleu": "BLEU", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L"}


class EvalInputError(UserError, ValueError):
    """A hypothesis or reference table that cannot be paired (names the file)."""


def _translate_results(path: str) -> list[str] | None:
    """Parquet files of a translate output folder (``<out>`` or ``<out>/translate``)."""
    from ctray.io.output import OutputLayout, resolve_fs
    from pyarrow import fs as pafs

    for root in (path, f"{path.rstrip('/')}/translate"):
        filesystem, base = resolve_fs(root + "/results")
        if filesystem.get_file_info(base).type == pafs.FileType.Directory:
            return OutputLayout(root).parquet_files("results")
    return None


def _read_table(spec: TranslationInput) -> pd.DataFrame:
    import pyarrow.parquet as pq

    from ctray.io.output import resolve_fs

    files = _translate_results(spec.path)
    if files is not None:
        if not files:
            raise EvalInputError(f"{spec.path}: the output folder has no results yet")
        tables = []
        for uri in files:
            filesystem, p = resolve_fs(uri)
            tables.append(pq.read_table(p, filesystem=filesystem).to_pandas())
        return pd.concat(tables, ignore_index=True)
    fmt = spec.format
    if fmt == "auto":
        suffix = Path(spec.path).suffix.lower()
        fmt = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl", ".json": "jsonl"}.get(suffix, "")
        if not fmt:
            raise EvalInputError(f"{spec.path}: cannot tell the format; set format")
    try:
        if fmt == "csv":
            return pd.read_csv(spec.path, dtype=str, keep_default_na=False, na_values=[""])
        if fmt == "parquet":
            return pd.read_parquet(spec.path)
        return pd.read_json(spec.path, lines=True, dtype=False)
    except (OSError, ValueError) as exc:  # empty, truncated, malformed or unreadable
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise EvalInputError(f"{spec.path}: not a readable {fmt} file ({reason})") from None


def load_side(spec: TranslationInput) -> pd.DataFrame:
    """(report_id, section, text) rows of one side; missing/blank texts dropped."""
    df = _read_table(spec)
    if spec.section_column is not None and spec.section_column in df.columns:
        need = [spec.id_column, spec.section_column, spec.text_column]
        missing = [c for c in need if c not in df.columns]
        if missing:
            raise EvalInputError(f"{spec.path}: missing column(s) {missing}; has {sorted(df.columns)}")
        out = df[need].set_axis(["report_id", "section", "text"], axis=1)
    else:
        if not spec.sections:
            raise EvalInputError(
                f"{spec.path}: no {spec.section_column!r} column; for a file with one column "
                "per section set sections: {findings: <column>, impressions: <column>}")
        missing = [c for c in [spec.id_column, *spec.sections.values()] if c not in df.columns]
        if missing:
            raise EvalInputError(f"{spec.path}: missing column(s) {missing}; has {sorted(df.columns)}")
        out = pd.concat([df[[spec.id_column, col]].set_axis(["report_id", "text"], axis=1)
                         .assign(section=name) for name, col in spec.sections.items()],
                        ignore_index=True)[["report_id", "section", "text"]]
    out = out.astype({"report_id": str, "section": str})
    out = out[out["text"].notna() & (out["text"].astype(str).str.strip() != "")]
    dups = out.duplicated(["report_id", "section"])
    if dups.any():
        first = out[dups].iloc[0]
        raise EvalInputError(f"{spec.path}: {int(dups.sum())} duplicate (report_id, section) rows, "
                             f"e.g. {first['report_id']!r} / {first['section']!r}")
    return out.reset_index(drop=True)


def pair_up(hyp: pd.DataFrame, ref: pd.DataFrame, sections: list[str] | None):
    if sections is not None:
        hyp, ref = hyp[hyp["section"].isin(sections)], ref[ref["section"].isin(sections)]
    pairs = hyp.merge(ref, on=["report_id", "section"], suffixes=("_hyp", "_ref"), how="outer",
                      indicator=True)
    counts = {"pairs": int((pairs["_merge"] == "both").sum()),
              "hypothesis_only": int((pairs["_merge"] == "left_only").sum()),
              "reference_only": int((pairs["_merge"] == "right_only").sum())}
    both = pairs[pairs["_merge"] == "both"].drop(columns="_merge")
    both = both.rename(columns={"text_hyp": "hypothesis", "text_ref": "reference"})
    return both.sort_values(["section", "report_id"]).reset_index(drop=True), counts


def score_batch(batch: pd.DataFrame, scorer: PairScorer) -> pd.DataFrame:
    rows = [scorer.score(r, h) for r, h in zip(batch["reference"], batch["hypothesis"])]
    return pd.concat([batch.reset_index(drop=True), pd.DataFrame(rows)], axis=1)


def score_pairs(pairs: pd.DataFrame, scorer: PairScorer, parallel_threshold: int = 2000,
                run_cfg=None) -> pd.DataFrame:
    if len(pairs) <= parallel_threshold:
        out, started = [], time.time()
        for start in range(0, len(pairs), 200):
            out.append(score_batch(pairs.iloc[start:start + 200], scorer))
            log.info("eval-translate: scored %d/%d pairs (%.0fs)", min(start + 200, len(pairs)),
                     len(pairs), time.time() - started)
        return pd.concat(out, ignore_index=True) if out else score_batch(pairs, scorer)
    import ray

    from ctray.pipeline.ray_session import init_ray

    if run_cfg is not None:
        init_ray(run_cfg)
    ds = ray.data.from_pandas(pairs).repartition(max(1, len(pairs) // 200))
    scored = ds.map_batches(score_batch, fn_kwargs={"scorer": scorer}, batch_format="pandas",
                            batch_size=200, **LIGHT_TASK)
    return scored.to_pandas().sort_values(["section", "report_id"]).reset_index(drop=True)


def _mean_sd(values: pd.Series, decimals: int) -> str:
    if not len(values):
        return ""
    sd = values.std(ddof=1)
    return f"{values.mean():.{decimals}f} ({'nan' if pd.isna(sd) else f'{sd:.{decimals}f}'})"


def summarize(scored: pd.DataFrame, scorer: PairScorer, with_corpus_bleu: bool = True,
              decimals: int = 3) -> pd.DataFrame:
    """Per section: N, mean and SD (ddof=1) of each metric, and corpus BLEU."""
    rows = []
    for section, part in scored.groupby("section", sort=False):
        row: dict[str, Any] = {"section": section, "N": len(part)}
        for m in METRICS:
            row[f"{m}_mean"] = part[m].mean()
            row[f"{m}_sd"] = part[m].std(ddof=1)
            row[METRIC_LABELS[m]] = _mean_sd(part[m], decimals)
        if with_corpus_bleu:
            tok = scorer.tokenizer()
            row["corpus_bleu"] = corpus_bleu([tok.tokenize(t) for t in part["reference"]],
                                             [tok.tokenize(t) for t in part["hypothesis"]])
        rows.append(row)
    return pd.DataFrame(rows)


def text_statistics(hyp: pd.DataFrame, ref: pd.DataFrame, cfg: TranslateEvalConfig) -> pd.DataFrame:
    """Table 1: mean (SD) of characters, words, sentences, unique words per section and side."""
    from ctray.text.stats import stats_table

    tables = []
    for side, spec in ((hyp, cfg.hypotheses), (ref, cfg.references)):
        if cfg.sections is not None:
            side = side[side["section"].isin(cfg.sections)]
        wide = side.pivot(index="report_id", columns="section", values="text")
        sections = [s for s in (cfg.sections or sorted(side["section"].unique())) if s in wide]
        table = stats_table(wide.reset_index().assign(dataset=spec.label), sections,
                            group_column="dataset", lang=spec.lang)
        tables.append(table)
    out = pd.concat(tables, ignore_index=True)
    order = {s: i for i, s in enumerate(cfg.sections or sorted(out["section"].unique()))}
    return out.sort_values("section", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)


def _markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join("" if pd.isna(v) else str(v) for v in r) + " |")
    return "\n".join(lines)


def render_report(cfg: TranslateEvalConfig, summary: pd.DataFrame, stats: pd.DataFrame,
                  counts: dict[str, int]) -> str:
    table2 = summary[["section", "N", *METRIC_LABELS.values()]].copy()
    if "corpus_bleu" in summary:
        table2["corpus BLEU (sacrebleu)"] = summary["corpus_bleu"].map(lambda v: f"{v:.{cfg.decimals}f}")
    smoothing = cfg.bleu_smoothing or "method0"
    return "\n".join([
        f"# Translation evaluation: {cfg.hypotheses.label} vs {cfg.references.label}",
        "",
        f"Pairs scored: {counts['pairs']} (only in hypotheses: {counts['hypothesis_only']}, "
        f"only in references: {counts['reference_only']}).",
        "",
        "## Translation metrics, mean (SD) per report",
        "",
        _markdown(table2),
        "",
        f"BLEU: nltk sentence_bleu per section text, weights {tuple(cfg.bleu_weights)}, "
        f"smoothing {smoothing}, one reference; ROUGE: rouge-score F-measure; tokens: "
        + ("MeCab (unidic-lite) words" + (", punctuation kept" if cfg.keep_punct else ", punctuation dropped")
           if cfg.lang == "ja" else "lower-cased English words")
        + ". SD is the sample SD (ddof=1). See docs/translation_eval.md.",
        "",
        "## Text statistics, mean (SD) per report",
        "",
        _markdown(stats),
        "",
    ])


def evaluate(cfg: TranslateEvalConfig, output: str | None = None) -> dict[str, Any]:
    """Score, summarise and write pairs.csv, summary.csv, text_stats.csv, report.md."""
    started = time.time()
    out_dir = Path(output or cfg.run.output)
    hyp, ref = load_side(cfg.hypotheses), load_side(cfg.references)
    pairs, counts = pair_up(hyp, ref, cfg.sections)
    if not counts["pairs"]:
        raise EvalInputError(
            f"no (report_id, section) pairs in common between {cfg.hypotheses.path} "
            f"({len(hyp)} rows) and {cfg.references.path} ({len(ref)} rows)")
    scorer = PairScorer(cfg.lang, cfg.keep_punct, tuple(cfg.bleu_weights), cfg.bleu_smoothing)
    scored = score_pairs(pairs, scorer, cfg.parallel_threshold, cfg.run)
    summary = summarize(scored, scorer, cfg.corpus_bleu, cfg.decimals)
    stats = text_statistics(hyp[hyp.set_index(["report_id", "section"]).index.isin(
        pairs.set_index(["report_id", "section"]).index)],
        ref[ref.set_index(["report_id", "section"]).index.isin(
            pairs.set_index(["report_id", "section"]).index)], cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_pair = scored.drop(columns=["hypothesis", "reference"])
    per_pair.to_csv(out_dir / "pairs.csv", index=False)
    summary.to_csv(out_dir / "summary.csv", index=False)
    stats.to_csv(out_dir / "text_stats.csv", index=False)
    report = render_report(cfg, summary, stats, counts)
    (out_dir / "report.md").write_text(report, encoding="utf-8")
    write_job_manifest(cfg, started, output=str(out_dir), counts=counts,
                       files=["pairs.csv", "summary.csv", "text_stats.csv", "report.md"])
    print(f"[ctray {cfg.job}] {counts['pairs']} pairs scored; report {out_dir / 'report.md'}")
    return {"output": str(out_dir), "counts": counts, "summary": summary, "text_stats": stats,
            "pairs": per_pair, "report": report}
