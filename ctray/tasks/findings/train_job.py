"""``ctray train-findings``: fine-tune a BERT-style encoder on the 18 CT-RATE findings
with Ray Train (CT-BERT-JPN recipe: BCE, AdamW lr 2e-5, batch 8, weight decay 0.01,
4 epochs, 80/20 split, best epoch kept).

The encoder defaults by language (``ctray.models.encoders.default_encoder``): English
reports train the packaged all-MiniLM-L6-v2 (offline), Japanese ones tohoku BERT (a
Hugging Face download). Labels are gold labels (CT-RATE's multi-abnormality CSV) or
the rule labeler's output on the same reports (``labels.source: rules``; distillation
when no gold labels exist). The held-out split is seeded and grouped by patient
(CT-RATE's ``valid_<patient>_<scan>`` ids), so no patient's scans sit on both sides.

Ray Train V2 (the default in Ray 2.60) has no ``Trainer.restore``: a run resumes when
it is started again with the same ``RunConfig(name, storage_path)``; the controller
reloads its checkpoint list from storage and ``ray.train.get_checkpoint()`` hands the
latest one to the workers. So re-running this job after a kill (or with more epochs)
continues from the last finished epoch. A fingerprint stored beside the checkpoints
stops a resumed run from silently mixing two different experiments.

Long reports are windowed and max-pooled per report in training as at inference
(``ctray.tasks.findings.model``). The best epoch (held-out macro F1) is exported as a
directory that ``FindingsClassifier.from_pretrained`` and Ray Serve load.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ctray.config import JobConfig, sample_path
from ctray.errors import UserError
from ctray.io.corpus import CorpusConfig
from ctray.models.encoders import default_encoder, resolve_encoder_source
from ctray.tasks.findings.schema import FINDING_COLUMNS, FINDING_NAMES
from ctray.train.common import (CheckpointParams, ScalingParams, export_dir, gather,
                                 prepare_run)

log = logging.getLogger(__name__)

SCORE = "val_macro_f1"
# CT-RATE ids: <split>_<patient>_<scan>[_<reconstruction>] ("valid_12_a" -> "valid_12")
PATIENT_ID = re.compile(r"^(.+?_\d+)_[a-z]+(?:_\d+)?$")


def _default_corpus() -> CorpusConfig:
    return CorpusConfig(path=sample_path("sample_reports_en.csv"),
                        sections={"findings": "Findings_EN", "impressions": "Impressions_EN"})


class LabelsConfig(BaseModel):
    """Gold labels: CT-RATE's multi-abnormality layout (an id column plus the 18 finding
    columns by display name, or ctray's snake_case names)."""

    model_config = ConfigDict(extra="forbid")
    source: Literal["gold", "rules"] = Field(
        "gold", description='"gold": the labels CSV below; "rules": the rule labeler\'s output on '
        "the training text itself (no labels file needed)")
    path: str = Field(
        default_factory=lambda: sample_path("sample_labels.csv"), description="gold labels CSV in "
        "CT-RATE's multi-abnormality layout (source: gold)")
    id_column: str = Field("VolumeName", description="the report id column of the labels")


class TrainingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    learning_rate: float = Field(2e-5, description="AdamW learning rate")
    batch_size: int = Field(8, description="reports per worker per step")
    eval_batch_size: int = Field(8, description="reports per evaluation batch")
    weight_decay: float = Field(0.01, description="AdamW weight decay")
    epochs: int = Field(4, description="training epochs")
    warmup_ratio: float = Field(0.0, description="transformers.Trainer's default linear schedule")
    max_grad_norm: float = Field(1.0, description="gradient clipping norm")
    val_fraction: float = Field(0.2, description="share of patients held out for validation")
    seed: int = Field(42, description="seed of the split and the training")
    max_length: int = Field(512, description="tokens per window")
    stride: int = Field(128, description="overlap of consecutive windows of a long report (tokens)")
    chunk_batch_size: int = Field(16, description="windows per forward pass at evaluation")
    mixed_precision: Literal["auto", "bf16", "fp16", "no"] = Field(
        "auto", description="bf16 / fp16 autocast; auto: bf16 on a GPU that has it")
    log_every_steps: int = Field(50, description="steps between progress lines")


class FindingsCheckpoint(CheckpointParams):
    name: str = "train_findings"


class TrainFindingsConfig(JobConfig):
    job: str = "train-findings"
    corpus: CorpusConfig = Field(
        default_factory=_default_corpus, description="the reports to read (path, columns, limit)")
    labels: LabelsConfig = Field(
        default_factory=LabelsConfig, description="the gold labels joined to the corpus by report "
        "id")
    lang: Literal["auto", "en", "ja"] = Field(
        "auto", description="report language: picks the default encoder and the rule labeler; "
        "auto: detected from the reports")
    model: str | None = Field(
        None, description="packaged encoder name (all-minilm-l6-v2), HF id, local path or s3:// "
        "directory; default: all-minilm-l6-v2 for English, tohoku-nlp/bert-base-japanese-v3 "
        "(a download) for Japanese")
    tokenizer: str | None = Field(None, description="default: the model's own")
    training: TrainingParams = Field(
        default_factory=TrainingParams, description="optimisation hyperparameters")
    scaling: ScalingParams = Field(
        default_factory=ScalingParams, description="Ray Train workers and resources")
    checkpoint: FindingsCheckpoint = Field(
        default_factory=FindingsCheckpoint, description="where checkpoints go and how many are "
        "kept")
    thresholds: Literal["fixed", "search"] = Field(
        "fixed", description='"search": per-finding thresholds maximising F1 on the held-out '
        "split.")
    export: str | None = Field(None, description="default <run.output>/model")

    @field_validator("corpus", mode="before")
    @classmethod
    def _corpus_defaults(cls, value):
        # `--limit 10` alone must not drop the default corpus path and sections.
        if isinstance(value, dict) and "path" not in value:
            return {**_default_corpus().model_dump(exclude_unset=True), **value}
        return value


# ----------------------------------------------------------------------------- data

def detect_language(texts: list[str]) -> str:
    """The majority language of (up to 200 of) the reports."""
    from ctray.text.sentences import detect_lang

    sample = [detect_lang(t) for t in texts[:200]]
    return "ja" if sample.count("ja") * 2 > len(sample) else "en"


def rule_labels(df: pd.DataFrame, lang: str) -> pd.DataFrame:
    """``df`` with the 18 finding columns from the rule labeler (distillation targets)."""
    from ctray.tasks.findings.rules import RuleLabeler

    labeler = RuleLabeler(lang)
    rows = [labeler.label(t).labels for t in df["text"]]
    out = df[["report_id", "text"]].reset_index(drop=True)
    return pd.concat([out, pd.DataFrame(rows, columns=list(FINDING_COLUMNS)).astype(int)], axis=1)


def choose_model(cfg: TrainFindingsConfig, texts: list[str]) -> str:
    """``cfg.model``, or the default encoder of the reports' language."""
    if cfg.model:
        return cfg.model
    return default_encoder(cfg.lang if cfg.lang != "auto" else detect_language(texts))


def load_labeled_reports(corpus: CorpusConfig, labels: LabelsConfig,
                         lang: str = "auto") -> tuple[pd.DataFrame, dict]:
    """(report_id, text, 18 label columns) for every readable, labelled report."""
    from ctray.io.corpus import read_corpus
    from ctray.pipeline.stage import ERROR_COL
    from ctray.tasks.findings.schema import to_columns

    reports = read_corpus(corpus).to_pandas()
    bad = reports[ERROR_COL].notna() if ERROR_COL in reports else pd.Series(False, reports.index)
    if labels.source == "rules":
        ok = reports.loc[~bad, ["report_id", "text"]]
        ok = ok[ok["text"].fillna("").str.strip() != ""]
        if ok.empty:
            raise UserError(f"{corpus.path}: no readable report to label")
        lang = lang if lang != "auto" else detect_language(ok["text"].tolist())
        df = rule_labels(ok.sort_values("report_id", ignore_index=True), lang)
        return df, {"reports_read": len(reports), "unreadable_reports": int(bad.sum()),
                    "unreadable_ids": reports.loc[bad, "report_id"].astype(str).head(20).tolist(),
                    "labelled_reports": len(df), "label_source": f"rules ({lang})",
                    "positives": {c: int(df[c].sum()) for c in FINDING_COLUMNS}}
    gold = to_columns(pd.read_csv(labels.path))
    missing = [c for c in FINDING_COLUMNS if c not in gold.columns]
    if labels.id_column not in gold.columns or missing:
        raise UserError(f"{labels.path}: needs column {labels.id_column!r} and the 18 finding "
                        f"columns; missing {([labels.id_column] if labels.id_column not in gold else []) + missing}")
    values = gold[list(FINDING_COLUMNS)]
    if not values.isin([0, 1]).all().all():
        raise UserError(f"{labels.path}: finding columns must hold 0/1 only")
    gold = gold[[labels.id_column, *FINDING_COLUMNS]].rename(columns={labels.id_column: "report_id"})
    gold["report_id"] = gold["report_id"].astype(str)
    ok = reports.loc[~bad, ["report_id", "text"]]
    df = ok.merge(gold, on="report_id", how="inner").sort_values("report_id", ignore_index=True)
    stats = {"reports_read": len(reports), "unreadable_reports": int(bad.sum()),
             "unreadable_ids": reports.loc[bad, "report_id"].astype(str).head(20).tolist(),
             "reports_without_labels": int(len(ok) - len(df)), "labelled_reports": len(df)}
    if df.empty:
        raise UserError(f"no report of {corpus.path} has labels in {labels.path} "
                        f"(ids joined on {labels.id_column!r})")
    return df, stats


def split_groups(df: pd.DataFrame) -> np.ndarray:
    """One group per patient: rows sharing a CT-RATE patient id (``valid_12_a`` and
    ``valid_12_b``) or an identical report text (reconstructions of one scan) are
    linked, and each connected set is one group. Ids outside CT-RATE's pattern are
    their own patient."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    ids = df["report_id"].astype(str)
    patient = ids.str.extract(PATIENT_ID, expand=False).fillna(ids)
    n = len(df)
    p_codes = patient.factorize()[0]
    t_codes = df["text"].factorize()[0]
    # Bipartite graph rows -- (patients, texts): components are the groups.
    cols = np.concatenate([n + p_codes, n + p_codes.max(initial=-1) + 1 + t_codes])
    rows = np.concatenate([np.arange(n), np.arange(n)])
    size = n + p_codes.max(initial=-1) + 1 + t_codes.max(initial=-1) + 1
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(size, size))
    return connected_components(graph, directed=False)[1][:n]


def split_reports(df: pd.DataFrame, val_fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seeded held-out split by patient (``split_groups``): a patient's scans, and
    identical report texts, stay on one side so validation never sees training text."""
    from sklearn.model_selection import GroupShuffleSplit

    # Sorted first: the split must not depend on the order the corpus was read in.
    df = df.sort_values("report_id", ignore_index=True)
    groups = split_groups(df)
    splitter = GroupShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
    train_idx, val_idx = next(splitter.split(df, groups=groups))
    return (df.iloc[np.sort(train_idx)].reset_index(drop=True),
            df.iloc[np.sort(val_idx)].reset_index(drop=True))


def write_split(output: str, train_df: pd.DataFrame, val_df: pd.DataFrame) -> str:
    """``<output>/split.csv``: report_id -> train / val, so the held-out reports can be
    labelled and scored later (``label-findings`` + ``eval-findings``) without leakage."""
    import fsspec

    path = f"{output.rstrip('/')}/split.csv"
    frame = pd.concat([train_df[["report_id"]].assign(split="train"),
                       val_df[["report_id"]].assign(split="val")], ignore_index=True)
    fs, where = fsspec.core.url_to_fs(path)
    fs.makedirs(where.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(where, "w") as fh:
        frame.to_csv(fh, index=False)
    return path


# ----------------------------------------------------------------------------- metrics

def epoch_metrics(y_true: np.ndarray, probs: np.ndarray,
                  threshold: float | np.ndarray = 0.5) -> dict[str, float]:
    """Held-out metrics; ``threshold`` is one value or one per finding (CT-RATE order)."""
    from ctray.tasks.findings.evaluation import evaluate_findings

    cols = list(FINDING_COLUMNS)
    table = evaluate_findings(pd.DataFrame(y_true, columns=cols),
                              pd.DataFrame((probs >= threshold).astype(int), columns=cols),
                              pd.DataFrame(probs, columns=cols))
    eps = 1e-7
    p = np.clip(probs, eps, 1 - eps)
    out = {"val_loss": float(-np.mean(y_true * np.log(p) + (1 - y_true) * np.log(1 - p))),
           SCORE: float(table.loc["macro", "f1"]), "val_micro_f1": float(table.loc["micro", "f1"]),
           "val_macro_auc": float(table.loc["macro", "auc_roc"])}
    out.update({f"val_auc_{c}": float(table.loc[c, "auc_roc"]) for c in cols})
    return out


# ----------------------------------------------------------------------------- worker side

def _amp_dtype(mode: str, device):
    import torch

    if device.type != "cuda" or mode == "no":
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if mode == "bf16" else torch.float16


def _optimizer(model, params: TrainingParams):
    import torch

    # As transformers.Trainer: no weight decay on biases and LayerNorm weights.
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name
             else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": params.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=params.learning_rate)


class _Reports:
    def __init__(self, frame: pd.DataFrame):
        self.texts = frame["text"].tolist()
        self.labels = frame[list(FINDING_COLUMNS)].to_numpy(dtype=np.float32)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int):
        return self.texts[i], self.labels[i]


class _Collate:
    """Tokenise in the loader, so the work spreads over the epoch instead of a start-up pass."""

    def __init__(self, tokenizer, max_length: int, stride: int):
        self.tokenizer, self.max_length, self.stride = tokenizer, max_length, stride

    def __call__(self, items):
        import torch

        from ctray.models.windows import encode_reports, pad_chunks

        texts = [t for t, _ in items]
        enc = encode_reports(self.tokenizer, texts, self.max_length, self.stride)
        ids, mask = pad_chunks(enc.chunks, self.tokenizer.pad_token_id or 0)
        return {"input_ids": ids, "attention_mask": mask, "owner": torch.as_tensor(enc.owner),
                "labels": torch.as_tensor(np.stack([y for _, y in items])),
                "n_chunked": enc.n_chunked}


def _load_model(source: str, ckpt_dir: str | None, tokenizer_source: str | None):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    # Workers resolve again: on a multi-node cluster each node unzips / copies its own.
    where = os.path.join(ckpt_dir, "model") if ckpt_dir else resolve_encoder_source(source)
    tokenizer = AutoTokenizer.from_pretrained(
        where if ckpt_dir else resolve_encoder_source(tokenizer_source or source))
    model = AutoModelForSequenceClassification.from_pretrained(
        where, num_labels=len(FINDING_COLUMNS), problem_type="multi_label_classification",
        id2label=dict(enumerate(FINDING_NAMES)), label2id={n: i for i, n in enumerate(FINDING_NAMES)})
    return model, tokenizer


def _evaluate(model, tokenizer, frame: pd.DataFrame, params: TrainingParams, device,
              rank: int, world: int, amp) -> tuple[np.ndarray, int]:
    """Probabilities for every held-out report: each rank scores a disjoint share
    (no DistributedSampler padding, which would count reports twice), then all gather."""
    import contextlib

    import torch

    from ctray.tasks.findings.model import report_logits

    mine = np.arange(rank, len(frame), world)
    texts = frame["text"].tolist()
    probs, chunked = [], 0
    model.eval()
    ctx = torch.autocast("cuda", dtype=amp) if amp is not None else contextlib.nullcontext()
    with torch.inference_mode(), ctx:
        for s in range(0, len(mine), params.eval_batch_size):
            batch = [texts[i] for i in mine[s:s + params.eval_batch_size]]
            logits, windows = report_logits(getattr(model, "module", model), tokenizer, batch,
                                      params.max_length, params.stride, device,
                                      params.chunk_batch_size)
            probs.append(torch.sigmoid(logits.float()).cpu().numpy())
            chunked += int(np.sum(windows > 1))
    local = (mine, np.concatenate(probs) if probs else np.zeros((0, len(FINDING_COLUMNS))), chunked)
    out = np.zeros((len(frame), len(FINDING_COLUMNS)), dtype=np.float32)
    total_chunked = 0
    for idx, p, n in gather(local, world):
        out[idx] = p
        total_chunked += n
    return out, total_chunked


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    import ray
    import ray.train
    import ray.train.torch
    import torch
    from transformers import get_linear_schedule_with_warmup

    from ctray.models.windows import max_pool

    params = TrainingParams(**config["training"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(params.seed)
    train_df, val_df = ray.get(config["data"])
    device = ray.train.torch.get_device()
    amp = _amp_dtype(params.mixed_precision, device)

    checkpoint = ray.train.get_checkpoint()
    start_epoch, state = 0, None
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(os.path.join(d, "train_state.pt"), map_location="cpu",
                               weights_only=False)
            model, tokenizer = _load_model(config["model"], d, None)
        start_epoch = int(state["epoch"])
    else:
        model, tokenizer = _load_model(config["model"], None, config.get("tokenizer"))
    model = ray.train.torch.prepare_model(model)

    loader = torch.utils.data.DataLoader(
        _Reports(train_df), batch_size=params.batch_size, shuffle=True,
        collate_fn=_Collate(tokenizer, params.max_length, params.stride),
        generator=torch.Generator().manual_seed(params.seed))
    loader = ray.train.torch.prepare_data_loader(loader, move_to_device=False)
    optimizer = _optimizer(model, params)
    total_steps = max(1, len(loader) * params.epochs)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(params.warmup_ratio * total_steps),
                                                total_steps)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
    loss_fn = torch.nn.BCEWithLogitsLoss()
    y_val = val_df[list(FINDING_COLUMNS)].to_numpy()
    epochs_run: list[int] = []
    history: list[dict] = list(state.get("history", [])) if state is not None else []

    for epoch in range(start_epoch, params.epochs):
        if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        model.train()
        started, seen, loss_sum, chunked = time.time(), 0, 0.0, 0
        for step, batch in enumerate(loader):
            ids = batch["input_ids"].to(device)
            mask = batch["attention_mask"].to(device)
            labels = batch["labels"].to(device)
            owner = batch["owner"].to(device)
            with (torch.autocast("cuda", dtype=amp) if amp is not None else _null()):
                logits = model(input_ids=ids, attention_mask=mask).logits
            loss = loss_fn(max_pool(logits.float(), owner, len(labels)), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), params.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            seen += len(labels)
            loss_sum += float(loss) * len(labels)
            chunked += int(batch["n_chunked"])
            if rank == 0 and params.log_every_steps and (step + 1) % params.log_every_steps == 0:
                print(f"[train-findings] epoch {epoch + 1}/{params.epochs} step {step + 1}/"
                      f"{len(loader)} loss {loss_sum / seen:.4f}", flush=True)
        ranks = np.stack(gather(np.array([seen, loss_sum, chunked, time.time() - started]), world))
        totals = ranks.sum(axis=0)
        eval_started = time.time()
        probs, val_chunked = _evaluate(model, tokenizer, val_df, params, device, rank, world, amp)
        metrics = {"epoch": epoch + 1, "train_loss": float(totals[1] / max(totals[0], 1)),
                   "train_reports": int(totals[0]), "n_chunked_train": int(totals[2]),
                   "n_chunked_val": int(val_chunked), "resumed_from_epoch": start_epoch,
                   # ranks run concurrently: global rate = all reports / slowest rank's time
                   "train_reports_per_s": float(totals[0] / max(ranks[:, 3].max(), 1e-9)),
                   "train_s": float(ranks[:, 3].max()), "eval_s": time.time() - eval_started,
                   **epoch_metrics(y_val, probs)}
        history.append({k: v for k, v in metrics.items() if not k.startswith("val_auc_")})
        epochs_run.append(epoch + 1)
        if rank == 0:
            print(f"[train-findings] epoch {epoch + 1}/{params.epochs}: train loss "
                  f"{metrics['train_loss']:.4f}, val macro F1 {metrics[SCORE]:.4f}, val macro AUC "
                  f"{metrics['val_macro_auc']:.4f}", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                getattr(model, "module", model).save_pretrained(os.path.join(tmp, "model"))
                tokenizer.save_pretrained(os.path.join(tmp, "model"))
                torch.save({"epoch": epoch + 1, "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                            "history": history},
                           os.path.join(tmp, "train_state.pt"))
                np.save(os.path.join(tmp, "val_probs.npy"), probs)
                # Readable without torch: the whole run so far, also after resumes.
                with open(os.path.join(tmp, "history.json"), "w") as f:
                    json.dump(history, f, indent=1)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt)
    return {"start_epoch": start_epoch + 1, "epochs_run": epochs_run}


def _null():
    import contextlib

    return contextlib.nullcontext()


# ----------------------------------------------------------------------------- driver side

def _fingerprint(cfg: TrainFindingsConfig) -> dict[str, Any]:
    # epochs may grow on resume (train 4, then continue to 6); nothing else may change.
    training = cfg.training.model_dump(exclude={"epochs", "log_every_steps", "eval_batch_size",
                                                "chunk_batch_size"})
    return {"model": cfg.model, "tokenizer": cfg.tokenizer, "corpus": cfg.corpus.model_dump(),
            "labels": cfg.labels.model_dump(), "lang": cfg.lang, "training": training,
            "split": "patient"}


def _best(result) -> tuple[Any, dict]:
    kept = [(c, m) for c, m in (result.best_checkpoints or []) if SCORE in m]
    if not kept:
        raise RuntimeError("training reported no checkpoint")
    # Ties go to the earlier epoch: same held-out score with less fitting.
    return max(kept, key=lambda cm: (cm[1][SCORE], -cm[1]["epoch"]))


def _history(result) -> list[dict]:
    """Every epoch's metrics (the latest checkpoint carries the run's full history;
    the result's own metrics list only covers the checkpoints still kept)."""
    if result.checkpoint is None:
        return []
    with result.checkpoint.as_directory() as d:
        path = os.path.join(d, "history.json")
        if not os.path.exists(path):
            return []
        with open(path, encoding="utf-8") as f:
            return json.load(f)


def export_best(result, cfg: TrainFindingsConfig, val_df: pd.DataFrame, export_to: str) -> dict:
    from ctray.tasks.findings.evaluation import search_thresholds
    from ctray.tasks.findings.model import FindingsModelMeta, load_meta, save_findings_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    checkpoint, metrics = _best(result)
    with checkpoint.as_directory() as d:
        model = AutoModelForSequenceClassification.from_pretrained(os.path.join(d, "model"))
        tokenizer = AutoTokenizer.from_pretrained(os.path.join(d, "model"))
        probs = np.load(os.path.join(d, "val_probs.npy"))
    thresholds = dict.fromkeys(FINDING_COLUMNS, 0.5)
    y_val = val_df[list(FINDING_COLUMNS)]
    if cfg.thresholds == "search":
        found = search_thresholds(y_val, pd.DataFrame(probs, columns=list(FINDING_COLUMNS)))
        thresholds = {c: float(v) for c, v in found.items()}
    # Tuned on the same split that picked the epoch: optimistic, recorded as such.
    tuned = epoch_metrics(y_val.to_numpy(), probs, np.array([thresholds[c] for c in FINDING_COLUMNS]))
    meta = FindingsModelMeta(
        thresholds=thresholds, max_length=cfg.training.max_length, stride=cfg.training.stride,
        base_model=cfg.model, source_checkpoint=checkpoint.path,
        metrics={"best_epoch": int(metrics["epoch"]), "selection": f"max {SCORE}",
                 **{k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                 "val_macro_f1_at_thresholds": tuned[SCORE], "thresholds": cfg.thresholds,
                 "history": _history(result)})
    export_dir(export_to, lambda d: save_findings_model(d, model, tokenizer, meta))
    return load_meta(export_to).to_dict() if "://" not in export_to else meta.to_dict()


def run_train_findings(cfg: TrainFindingsConfig) -> dict[str, Any]:
    import ray

    from ctray.io.manifest import write_job_manifest

    started = time.time()
    df, data_stats = load_labeled_reports(cfg.corpus, cfg.labels, cfg.lang)
    cfg = cfg.model_copy(update={"model": choose_model(cfg, df["text"].tolist())})
    # Resolved once on the driver: the packaged encoder is unzipped (or a bucket copied)
    # before the workers start, and a bad name fails here as one `ctray:` line.
    resolve_encoder_source(cfg.model)
    if cfg.tokenizer:
        resolve_encoder_source(cfg.tokenizer)
    train_df, val_df = split_reports(df, cfg.training.val_fraction, cfg.training.seed)
    run = prepare_run(cfg, _fingerprint(cfg), "model, data or hyperparameters")
    output, run_dir, export_to, gpu = run.output, run.run_dir, run.export_to, run.gpu
    split_file = write_split(output, train_df, val_df)
    print(f"[train-findings] {len(train_df)} training / {len(val_df)} held-out reports, "
          f"{cfg.scaling.num_workers} worker(s)")
    trainer = run.trainer(cfg, train_loop_per_worker,
                          {"training": cfg.training.model_dump(), "model": cfg.model,
                           "tokenizer": cfg.tokenizer, "data": ray.put((train_df, val_df))},
                          score=SCORE)
    result = trainer.fit()
    meta = export_best(result, cfg, val_df, export_to)
    run_info = result.return_value or {}
    summary = {
        "job": cfg.job, "output": output, "model_dir": export_to, "checkpoints": run_dir,
        "best_epoch": meta["metrics"]["best_epoch"], "best_val_macro_f1": meta["metrics"][SCORE],
        "best_val_macro_auc": meta["metrics"]["val_macro_auc"],
        "started_at_epoch": run_info.get("start_epoch"), "epochs_run": run_info.get("epochs_run"),
        "history": meta["metrics"]["history"], "thresholds": meta["thresholds"],
        "data": {**data_stats, "train_reports": len(train_df), "val_reports": len(val_df)},
        "n_chunked_val": meta["metrics"].get("n_chunked_val"),
        "use_gpu": gpu, "num_workers": cfg.scaling.num_workers, "split_file": split_file,
    }
    write_job_manifest(cfg, started, **summary, fingerprint=_fingerprint(cfg))
    print(f"[train-findings] best epoch {summary['best_epoch']} (val macro F1 "
          f"{summary['best_val_macro_f1']:.4f}); model in {export_to}; manifest "
          f"{output}/manifest.json")
    return summary
