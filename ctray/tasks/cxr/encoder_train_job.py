"""``ctray train-cxr-encoder``: the CheXbert recipe on a BERT-architecture encoder with
Ray Train, in two stages.

1. **Rules.** The encoder + 14 heads (``ctray.tasks.cxr.encoder_model``) learn the rule
   labels of a corpus (``label-cxr --labeler rules`` output), the dev gold reports and any
   other ``exclude`` list left out; a seeded share of the rule-labelled reports is held out
   to measure agreement with the rules each epoch. Class-weighted cross-entropy per head
   (inverse class frequency to ``class_weight_power``, capped) keeps the rare classes
   (Pleural Other, Fracture, any uncertain) from being drowned by blank.
2. **Gold.** Fine-tuning of the stage-1 model on expert labels (``gold.labels``), scored
   by k-fold cross-validation: fold k starts again from the stage-1 model, trains on the
   other folds and labels its own reports, so every gold report is labelled by a model
   that never saw it (``cv_predictions.csv``). A last unit trains on all gold reports;
   that model is the export.

Both stages are TorchTrainer runs (DDP over ``scaling.num_workers``, ``max_failures``)
whose loop works through *units* (stage 1: one unit; stage 2: the folds, then the full
fit), checkpointing the weights, optimizer, scheduler and finished units' predictions.
Ray Train V2 resumes a run started again under the same ``RunConfig(name, storage_path)``:
rerunning the command after a kill continues from the last checkpoint (a finished stage
is not trained again). A fingerprint beside the checkpoints refuses a changed recipe.

Outputs under ``run.output``: ``model/`` (the export, gold stage if run, else rules),
``model_rules/`` (stage 1), ``rules_stage_predictions.csv`` (stage 1 on the excluded dev
reports), ``cv_predictions.csv`` (stage 2, out-of-fold), ``train_log.jsonl``,
``checkpoints/`` and ``manifest.json``. Both CSVs are in the CheXpert layout, ready for
``ctray eval-cxr``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from ctray.config import JobConfig
from ctray.errors import UserError
from ctray.io.corpus import CorpusConfig
from ctray.tasks.cxr.schema import OBSERVATIONS
from ctray.train.labeler import IdList, LabelTable
from ctray.train.common import (CheckpointParams, ScalingParams, abs_uri, announce_resume,
                                check_resume, gather, make_trainer, run_locations, use_gpu)

DEFAULT_ENCODER = "all-minilm-l6-v2"
GOLD_PATH = "tests/data/cxr_dev_gold.csv"


def _openi_corpus() -> CorpusConfig:
    from ctray.tasks.cxr.label_job import openi_corpus

    return CorpusConfig(**openi_corpus("../shared/data/openi/indiana_reports.csv"))


class EncoderTrainingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    encoder_lr: float = Field(1e-4, description="AdamW learning rate of the encoder")
    head_lr: float = Field(1e-3, description="AdamW learning rate of the attention queries and "
                           "heads (new weights learn faster than pretrained ones)")
    weight_decay: float = Field(0.01, description="AdamW weight decay (not on biases and "
                                "LayerNorm)")
    batch_size: int = Field(16, description="reports per worker per step")
    eval_batch_size: int = Field(32, description="reports per forward pass when predicting")
    epochs: int = Field(5, description="epochs per training unit (stage 1)")
    warmup_ratio: float = Field(0.06, description="linear warm-up share of the steps")
    max_grad_norm: float = Field(1.0, description="gradient clipping norm")
    class_weight_power: float = Field(
        0.5, description="per-head class weights = (n_most_frequent / n_class) ** power, from "
        "the unit's training labels; 0 = plain cross-entropy")
    class_weight_max: float = Field(10.0, description="cap on a class weight (relative to the "
                                    "most frequent class)")
    pooling: Literal["attention", "mean", "cls"] = Field(
        "attention", description="attention: one learned query per observation over the "
        "report's tokens; mean: token mean (sentence-transformers); cls: [CLS] vector")
    head_dropout: float = Field(0.1, description="dropout on the pooled vectors")
    freeze_embeddings: bool = Field(True, description="keep the token embeddings fixed (half "
                                    "of MiniLM's weights; faster steps on CPU)")
    freeze_layers: int = Field(0, description="lowest transformer layers kept fixed")
    max_length: int = Field(256, description="tokens per window (longer reports: several "
                            "windows, pooled)")
    stride: int = Field(64, description="tokens shared by consecutive windows")
    consistency: bool = Field(True, description="apply the Lung Opacity parent and No Finding "
                              "rules of docs/cxr_labeling.md to predictions")
    aggregation: Literal["sentences", "report"] = Field(
        "sentences", description="sentences: a pathology's report label is the strongest of "
        "its sentences' labels (1 > -1 > 0 > blank, docs/cxr_labeling.md); report: the "
        "heads' answer for the whole report. Recorded in the export; used by every prediction")
    span_ratio: float = Field(
        1.0, ge=0.0, description="rule-labelled spans (single sentences and runs of up to "
        "span_sentences sentences of the training reports) sampled per stage-1 epoch, as a "
        "share of the training reports; 0 = whole reports only (span_teacher.py)")
    span_sentences: int = Field(2, ge=1, description="longest span, in sentences")
    span_batch_size: int = Field(32, ge=1, description="spans per worker per step (spans are "
                                 "short: about a third of a report's tokens on Open-i)")
    span_weight_power: float = Field(
        1.0, description="spans are drawn by the rarest label they carry, rarity counted "
        "on the training reports: (n_most_frequent / n_class) ** power per head")
    span_weight_max: float = Field(20.0, description="cap on a span's sampling weight")
    seed: int = Field(42, description="seed of splits, folds, batches and head init")
    log_every_steps: int = Field(25, description="steps between progress lines")


class GoldStage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: LabelTable | None = Field(
        default_factory=lambda: LabelTable(path=GOLD_PATH, id_column="uid"),
        description="expert labels (CheXpert layout); null skips stage 2")
    folds: int = Field(5, ge=2, description="cross-validation folds over the gold reports")
    epochs: int = Field(6, description="epochs per fold (and for the final fit)")
    encoder_lr: float = Field(3e-5, description="encoder learning rate in stage 2")
    head_lr: float = Field(3e-4, description="queries / heads learning rate in stage 2")
    batch_size: int = Field(8, description="reports per worker per step in stage 2")
    class_weight_power: float | None = Field(
        None, description="class weights of stage 2 (as training.class_weight_power, counted "
        "on the fold's gold reports); null: the stage-1 setting")
    loss: Literal["reading", "report"] = Field(
        "reading", description="reading: the loss scores the report as inference reads it "
        "(with training.aggregation sentences: the sentences' labels aggregated, "
        "encoder_model.mention_log_probs), so expert report labels teach the sentence "
        "reading; report: the heads' answer for the whole report")


class EncoderCheckpoint(CheckpointParams):
    name: str = "train_cxr_encoder"


class TrainCxrEncoderConfig(JobConfig):
    job: str = "train-cxr-encoder"
    corpus: CorpusConfig = Field(default_factory=_openi_corpus,
                                 description="reports as label-cxr reads them (Open-i layout)")
    labels: LabelTable = Field(
        default_factory=lambda: LabelTable(path="runs/openi_rules/labels.csv", id_column="uid"),
        description="stage-1 labels: label-cxr output (folder or labels.csv) over the corpus")
    exclude: list[IdList] = Field(
        default_factory=lambda: [IdList(path=GOLD_PATH, id_column="uid")],
        description="id lists never trained on in stage 1 (the dev gold set)")
    val_fraction: float = Field(0.05, ge=0.0, lt=1.0, description="rule-labelled reports held "
                                "out in stage 1 (agreement with the rules per epoch)")
    max_train_reports: int | None = Field(None, description="seeded cap on stage-1 reports")
    model: str = Field(DEFAULT_ENCODER, description="encoder: packaged short name, HF id, "
                       "local folder or s3:// folder")
    training: EncoderTrainingParams = Field(default_factory=EncoderTrainingParams,
                                            description="stage-1 recipe (and shared settings)")
    gold: GoldStage = Field(default_factory=GoldStage, description="stage 2: gold fine-tuning "
                            "with k-fold cross-validation")
    scaling: ScalingParams = Field(default_factory=lambda: ScalingParams(cpus_per_worker=2),
                                   description="Ray Train workers and resources")
    checkpoint: EncoderCheckpoint = Field(default_factory=EncoderCheckpoint,
                                          description="checkpoint storage and run name")
    export: str | None = Field(None, description="default <run.output>/model")


# ----------------------------------------------------------------------------- data

def resolve_encoder(name_or_path: str) -> str:
    """The local folder of an encoder source (packaged short name, HF id, folder, URI)."""
    from ctray.models.encoders import resolve_encoder_source

    return str(resolve_encoder_source(name_or_path))


def read_label_table(table: LabelTable) -> pd.DataFrame:
    """Index report id (str), the 14 observations as 1.0/0.0/-1.0/NaN."""
    from ctray.tasks.cxr import sft_format
    from ctray.train.labeler import read_labels

    return read_labels(sft_format, table)


def read_ids(items: list[IdList]) -> set[str]:
    from ctray.train.labeler import read_ids as _read_ids

    out: set[str] = set()
    for item in items:
        out |= _read_ids(item)
    return out


def read_texts(corpus: CorpusConfig) -> pd.Series:
    """report_id -> text for every readable report."""
    from ctray.io.corpus import read_corpus
    from ctray.pipeline.stage import ERROR_COL

    df = read_corpus(corpus).to_pandas()
    if ERROR_COL in df:
        df = df[df[ERROR_COL].isna()]
    df = df[df["text"].fillna("").str.strip() != ""]
    return df.assign(report_id=df["report_id"].astype(str)).set_index("report_id")["text"]


def stage1_frames(cfg: TrainCxrEncoderConfig, texts: pd.Series, rules: pd.DataFrame,
                  excluded: set[str]) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(train, held-out) frames: report_id, text, the 14 rule labels."""
    joined = rules.join(texts, how="inner")
    usable = joined[~joined.index.isin(excluded)]
    if usable.empty:
        raise UserError(f"no report of {cfg.corpus.path} has labels in {cfg.labels.path} "
                        f"(after excluding {len(excluded)} ids)")
    ids = np.array(sorted(usable.index))
    rng = np.random.default_rng(cfg.training.seed)
    rng.shuffle(ids)
    n_val = int(round(len(ids) * cfg.val_fraction))
    val_ids, train_ids = ids[:n_val], ids[n_val:]
    if cfg.max_train_reports is not None:
        train_ids = train_ids[:cfg.max_train_reports]
    frame = usable.rename_axis("report_id").reset_index()
    by_id = frame.set_index("report_id")
    stats = {"labelled_reports": int(len(joined)), "excluded_ids": len(excluded),
             "excluded_labelled": int(len(joined) - len(usable)),
             "train_reports": int(len(train_ids)), "val_reports": int(len(val_ids))}
    return (by_id.loc[sorted(train_ids)].reset_index(), by_id.loc[sorted(val_ids)].reset_index(),
            stats)


def fold_units(n: int, folds: int, seed: int, epochs: int) -> list[dict]:
    """k cross-validation units (train on the other folds, predict the fold), then the
    full fit that is exported. Every index is predicted by exactly one unit."""
    from sklearn.model_selection import KFold

    if n < folds:
        raise UserError(f"{n} gold reports cannot make {folds} folds")
    units = []
    for k, (train, test) in enumerate(KFold(folds, shuffle=True, random_state=seed)
                                      .split(np.arange(n))):
        units.append({"name": f"fold{k}", "train": train.tolist(), "predict": test.tolist(),
                      "epochs": epochs, "export": False})
    units.append({"name": "full", "train": list(range(n)), "predict": [], "epochs": epochs,
                  "export": True})
    return units


# ----------------------------------------------------------------------------- worker side

def class_weights(y: np.ndarray, k: int, power: float, cap: float) -> np.ndarray:
    """Per-class weights of one head: (n_most_frequent / n_class) ** power, at most ``cap``,
    renormalised so the mean weight over the training examples is 1 (the loss keeps the
    scale of plain cross-entropy). A class absent from the labels counts as one example."""
    from ctray.tasks.cxr.encoder_model import inverse_frequency

    counts = np.bincount(y, minlength=k).astype(float)
    if power == 0:
        return np.ones(k)
    w = inverse_frequency(counts, power, cap)
    return w * counts.sum() / max(float((w * counts).sum()), 1e-9)


def length_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                   group: int = 50) -> list[np.ndarray]:
    """Shuffled batches of similar length: shuffle, sort within groups of ``group``
    batches, cut, shuffle the batch order (little padding, still random)."""
    order = rng.permutation(len(lengths))
    batches = []
    span = batch_size * group
    for s in range(0, len(order), span):
        chunk = order[s:s + span]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _optimizer(net, encoder_lr: float, head_lr: float, weight_decay: float):
    import torch

    module = getattr(net, "module", net)
    head_ids = {id(p) for p in module.head_parameters()}
    decay, no_decay, heads = [], [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in head_ids:
            heads.append(p)
        elif name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return torch.optim.AdamW([
        {"params": decay, "lr": encoder_lr, "weight_decay": weight_decay},
        {"params": no_decay, "lr": encoder_lr, "weight_decay": 0.0},
        {"params": heads, "lr": head_lr, "weight_decay": 0.0}])


def load_base(source: str, meta_overrides: dict[str, Any]):
    """(net, tokenizer): a stage-1 export (its heads too) or a plain encoder (new heads)."""
    from transformers import AutoModel, AutoTokenizer

    from ctray.tasks.cxr.encoder_model import EncoderMeta, build_net, is_encoder_labeler, load_net

    if is_encoder_labeler(source):
        net, tokenizer = load_net(source)
        for k, v in meta_overrides.items():
            setattr(net.meta, k, v)
        return net.train(), tokenizer
    config = json.loads((Path(source) / "config.json").read_text(encoding="utf-8"))
    kwargs = {"add_pooling_layer": False} if config.get("model_type") == "bert" else {}
    encoder = AutoModel.from_pretrained(source, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(source)
    return build_net(encoder, EncoderMeta(**meta_overrides)), tokenizer


def freeze(net, embeddings: bool, layers: int) -> None:
    """Freeze the word/position embeddings and the lowest ``layers`` transformer layers:
    less backward work and a 11.7M-row smaller optimizer step on CPU (MiniLM's
    30k x 384 embedding is half its parameters)."""
    encoder = net.encoder
    if embeddings and hasattr(encoder, "embeddings"):
        for prm in encoder.embeddings.parameters():
            prm.requires_grad_(False)
    stack = getattr(getattr(encoder, "encoder", None), "layer", None)
    if layers and stack is not None:
        for layer in list(stack)[:layers]:
            for prm in layer.parameters():
                prm.requires_grad_(False)


def predict_sharded(net, tokenizer, texts: list[str], device, batch_size: int, rank: int,
                    world: int) -> tuple[np.ndarray, int]:
    """Class index per report and observation [n, 14] (each rank scores a disjoint share,
    then all gather), and how many reports needed more than one window."""
    import torch

    from ctray.tasks.cxr.encoder_model import predict_classes

    module = getattr(net, "module", net)
    mine = np.arange(rank, len(texts), world)
    module.eval()
    classes = np.zeros((len(mine), len(module.meta.observations)), dtype=np.int64)
    chunked = 0
    if len(mine):
        with torch.inference_mode():  # the same reading as the exported labeler's
            classes, windows = predict_classes(module, tokenizer, [texts[i] for i in mine],
                                               device, batch_size)
        chunked = int(np.sum(windows > 1))
    module.train()
    out = np.zeros((len(texts), classes.shape[1]), dtype=np.int64)
    total = 0
    for idx, c, n in gather((mine, classes, chunked), world):
        out[idx] = c
        total += n
    return out, total


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    import ray
    import ray.train
    import ray.train.torch
    import torch
    from transformers import get_linear_schedule_with_warmup

    from ctray.tasks.cxr.encoder_model import (NO_FINDING, mention_log_probs, n_classes,
                                               save_encoder_labeler)
    from ctray.models.windows import pad_chunks, window_token_ids
    from ctray.tasks.cxr.span_teacher import sample_spans

    p = config["params"]
    units: list[dict] = config["units"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    texts, y, predict_extra = ray.get(config["data"])
    meta_overrides = {"pooling": p["pooling"], "max_length": p["max_length"],
                      "stride": p["stride"], "head_dropout": p["head_dropout"],
                      "consistency": p["consistency"], "aggregation": p["aggregation"],
                      "base_model": config["base_name"],
                      "stage": config["stage"]}

    state: dict[str, Any] = {"unit": 0, "epoch": 0, "predictions": {}, "history": []}
    resume_dir = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            with open(os.path.join(d, "state.json"), encoding="utf-8") as f:
                state = json.load(f)
            if os.path.isdir(os.path.join(d, "model")):
                resume_dir = tempfile.mkdtemp(prefix="ctray-enc-resume-")
                shutil.copytree(d, resume_dir, dirs_exist_ok=True)
    resumed_from = {"unit": state["unit"], "epoch": state["epoch"]}

    # Token ids once per report; windows are cut per batch.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(config["base"])
    ids = [tokenizer(t, add_special_tokens=False, truncation=False)["input_ids"] for t in texts]
    lengths = np.array([len(i) for i in ids])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def window_tensors(sequences):
        chunks, owner = [], []
        for k, seq in enumerate(sequences):
            for w in window_token_ids(seq, tokenizer, p["max_length"], p["stride"]):
                chunks.append(w)
                owner.append(k)
        input_ids, mask = pad_chunks(chunks, pad)
        return (input_ids.to(device), mask.to(device),
                torch.as_tensor(owner, dtype=torch.long, device=device))

    def batch_tensors(idx):
        return window_tensors([ids[i] for i in idx])

    # The gold stage's loss through the sentence reading: each report's sentences.
    sentence_ids = None
    if p.get("reading_loss") and p["aggregation"] == "sentences":
        from ctray.tasks.cxr.span_teacher import reading_sentences

        sentence_ids = [[tokenizer(s_, add_special_tokens=False, truncation=False)["input_ids"]
                         for s_ in reading_sentences(t)] for t in texts]

    def step_loss(idx, losses, weights, no_finding):
        input_ids, mask, owner = batch_tensors(idx)
        target = torch.as_tensor(y[idx], device=device)
        logits = net(input_ids, mask, owner, len(idx))
        if sentence_ids is None:
            parts = [fn(lg, target[:, j]) for j, (fn, lg) in enumerate(zip(losses, logits))]
            return sum(parts) / len(parts), int(mask.sum())
        seqs = [seq for i in idx for seq in sentence_ids[i]]
        s_owner = torch.as_tensor([k for k, i in enumerate(idx) for _ in sentence_ids[i]],
                                  dtype=torch.long, device=device)
        s_ids, s_mask, s_win = window_tensors(seqs)
        read = mention_log_probs(net(s_ids, s_mask, s_win, len(seqs)), s_owner, len(idx))
        parts = [losses[j](logits[j], target[:, j]) if j == no_finding else
                 torch.nn.functional.nll_loss(read[j], target[:, j], weight=weights[j])
                 for j in range(len(logits))]
        return sum(parts) / len(parts), int(mask.sum()) + int(s_mask.sum())

    while state["unit"] < len(units):
        unit = units[state["unit"]]
        if state["epoch"] >= unit["epochs"]:  # finished before this run
            state.update({"unit": state["unit"] + 1, "epoch": 0})
            continue
        if state["epoch"] > 0 and resume_dir is None:  # a fold's weights are not kept
            state["epoch"] = 0
        mid_unit = state["epoch"] > 0
        torch.manual_seed(p["seed"] + state["unit"])
        net, _ = load_base(os.path.join(resume_dir, "model") if mid_unit else config["base"],
                           meta_overrides)
        freeze(net, p["freeze_embeddings"], p["freeze_layers"])
        net = ray.train.torch.prepare_model(net)
        module = getattr(net, "module", net)
        train_idx = np.array(unit["train"], dtype=np.int64)
        spans = unit.get("spans") or {"index": [], "p": [], "per_epoch": 0}
        span_idx = np.asarray(spans["index"], dtype=np.int64)
        span_p = np.asarray(spans["p"], dtype=np.float64)
        n_spans = int(spans["per_epoch"])
        # Equal batch counts on every rank (DDP steps in lockstep).
        per_rank, spans_per_rank = len(train_idx) // world, n_spans // world
        steps_per_epoch = (-(-per_rank // p["batch_size"])
                           + -(-spans_per_rank // p["span_batch_size"]))
        optimizer = _optimizer(net, p["encoder_lr"], p["head_lr"], p["weight_decay"])
        total = max(1, steps_per_epoch * unit["epochs"])
        scheduler = get_linear_schedule_with_warmup(optimizer, int(p["warmup_ratio"] * total), total)
        if mid_unit:
            saved = torch.load(os.path.join(resume_dir, "train_state.pt"), map_location="cpu",
                               weights_only=False)
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
        weights = [torch.as_tensor(class_weights(y[train_idx, j], n_classes(o),
                                                 p["class_weight_power"], p["class_weight_max"]),
                                   dtype=torch.float32, device=device)
                   for j, o in enumerate(module.meta.observations)]
        losses = [torch.nn.CrossEntropyLoss(weight=w) for w in weights]
        no_finding = list(module.meta.observations).index(NO_FINDING) \
            if NO_FINDING in module.meta.observations else -1
        for epoch in range(state["epoch"], unit["epochs"]):
            rng = np.random.default_rng([p["seed"], state["unit"], epoch])
            shard = rng.permutation(train_idx)[rank * per_rank:(rank + 1) * per_rank]
            drawn = span_idx[sample_spans(len(span_idx), span_p, n_spans, rng)]
            span_shard = drawn[rank * spans_per_rank:(rank + 1) * spans_per_rank]
            # Spans in batches of their own (span_batch_size): a span costs a third of a report.
            batches = [shard[b] for b in length_batches(lengths[shard], p["batch_size"], rng)]
            batches += [span_shard[b] for b in
                        length_batches(lengths[span_shard], p["span_batch_size"], rng)]
            batches = [batches[i] for i in rng.permutation(len(batches))]
            net.train()
            started, seen, loss_sum, tokens = time.time(), 0, 0.0, 0
            for step, idx in enumerate(batches):
                loss, n_tokens = step_loss(idx, losses, weights, no_finding)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), p["max_grad_norm"])
                optimizer.step()
                scheduler.step()
                seen += len(idx)
                tokens += n_tokens
                loss_sum += float(loss.detach()) * len(idx)
                if rank == 0 and p["log_every_steps"] and (step + 1) % p["log_every_steps"] == 0:
                    print(f"[train-cxr-encoder] {config['stage']} {unit['name']} epoch "
                          f"{epoch + 1}/{unit['epochs']} step {step + 1}/{len(batches)} loss "
                          f"{loss_sum / seen:.4f} ({time.time() - started:.0f} s)", flush=True)
            ranks = np.stack(gather(np.array([seen, loss_sum, tokens, time.time() - started]),
                                    world))
            totals = ranks.sum(axis=0)
            train_s = float(ranks[:, 3].max())
            record = {"stage": config["stage"], "unit": unit["name"], "epoch": epoch + 1,
                      "train_loss": float(totals[1] / max(totals[0], 1)),
                      "train_examples": int(totals[0]), "train_spans": n_spans,
                      "train_tokens": int(totals[2]),
                      "train_s": train_s, "train_tokens_per_s": float(totals[2] / max(train_s, 1e-9)),
                      "train_examples_per_s": float(totals[0] / max(train_s, 1e-9)),
                      "resumed_from": resumed_from}
            last = epoch + 1 == unit["epochs"]
            if last and (unit["predict"] or predict_extra):
                started_pred = time.time()
                pred_idx = list(unit["predict"]) + list(predict_extra)
                classes, chunked = predict_sharded(net, tokenizer, [texts[i] for i in pred_idx],
                                                   device, p["eval_batch_size"], rank, world)
                state["predictions"][unit["name"]] = {"index": pred_idx,
                                                      "classes": classes.tolist()}
                record.update({"predicted": len(pred_idx), "predict_s": time.time() - started_pred,
                               "predicted_multi_window": chunked})
            state["history"].append(record)
            state["epoch"] = epoch + 1
            if rank == 0:
                print(f"[train-cxr-encoder] {config['stage']} {unit['name']} epoch {epoch + 1}/"
                      f"{unit['epochs']}: loss {record['train_loss']:.4f}, {train_s:.0f} s, "
                      f"{record['train_tokens_per_s']:.0f} tokens/s", flush=True)
            # Weights for resuming a unfinished unit and for the exported one; a finished
            # fold only leaves its predictions.
            keep_weights = not last or unit["export"]
            with tempfile.TemporaryDirectory() as tmp:
                ckpt = None
                if rank == 0:
                    if keep_weights:
                        module.meta.metrics = {"history": state["history"]}
                        save_encoder_labeler(os.path.join(tmp, "model"), module, tokenizer,
                                             module.meta)
                        torch.save({"optimizer": optimizer.state_dict(),
                                        "scheduler": scheduler.state_dict()},
                                       os.path.join(tmp, "train_state.pt"))
                    with open(os.path.join(tmp, "state.json"), "w", encoding="utf-8") as f:
                        json.dump(state, f)
                    ckpt = ray.train.Checkpoint.from_directory(tmp)
                ray.train.report({"unit": state["unit"], "epoch": record["epoch"],
                                  "train_loss": record["train_loss"]}, checkpoint=ckpt)
        state.update({"unit": state["unit"] + 1, "epoch": 0})
        if resume_dir is not None:
            shutil.rmtree(resume_dir, ignore_errors=True)
            resume_dir = None
    return {"resumed_from": resumed_from}


# ----------------------------------------------------------------------------- driver side

def _stage_fingerprint(cfg: TrainCxrEncoderConfig, stage: str) -> dict[str, Any]:
    # epochs may grow on resume (train 2, then continue to 3); nothing else may change.
    training = cfg.training.model_dump(exclude={"log_every_steps", "eval_batch_size", "epochs"})
    common = {"model": cfg.model, "corpus": cfg.corpus.model_dump(), "training": training,
              "labels": cfg.labels.model_dump(), "exclude": [e.model_dump() for e in cfg.exclude],
              "val_fraction": cfg.val_fraction, "max_train_reports": cfg.max_train_reports}
    if stage == "gold":
        common["gold"] = cfg.gold.model_dump()
        common["training"]["epochs"] = cfg.training.epochs
    return common


def _run_stage(cfg: TrainCxrEncoderConfig, stage: str, base: str, texts: list[str],
               y: np.ndarray, units: list[dict], predict_extra: list[int], storage: str,
               params: dict[str, Any]) -> dict[str, Any]:
    """One TorchTrainer run; returns the final state (predictions, history) and the
    local path of the last checkpoint."""
    import ray

    name = f"{cfg.checkpoint.name}_{stage}"
    if stage == "gold":
        # A new stage-1 model (e.g. more epochs) or gold recipe starts a new gold run;
        # stage 1 is not trained again for either.
        recipe = json.dumps(cfg.gold.model_dump(mode="json"), sort_keys=True).encode()
        name += f"_{_digest(base)}_{hashlib.sha256(recipe).hexdigest()[:6]}"
    run_dir = f"{storage.rstrip('/')}/{name}"
    previous = check_resume(run_dir, _stage_fingerprint(cfg, stage),
                            cfg.checkpoint.allow_config_change, "model, data or recipe")
    announce_resume("train-cxr-encoder", run_dir, previous)
    checkpoint_cfg = cfg.checkpoint.model_copy(update={"name": name})
    trainer = make_trainer(
        train_loop_per_worker,
        {"params": params, "units": units, "stage": stage, "base": base,
         "base_name": cfg.model, "data": ray.put((texts, y, predict_extra))},
        cfg.scaling, checkpoint_cfg, storage, use_gpu(cfg.scaling.use_gpu))
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"stage {stage}: training reported no checkpoint")
    local = tempfile.mkdtemp(prefix=f"ctray-enc-{stage}-")
    with result.checkpoint.as_directory() as d:
        shutil.copytree(d, local, dirs_exist_ok=True)
    with open(os.path.join(local, "state.json"), encoding="utf-8") as f:
        state = json.load(f)
    return {"state": state, "dir": local, "return": result.return_value or {}}


def _digest(model_dir: str) -> str:
    from ctray.tasks.cxr.encoder_model import HEADS_FILE

    return hashlib.sha256(Path(model_dir, HEADS_FILE).read_bytes()).hexdigest()[:10]


def _values_frame(ids: list[str], classes: np.ndarray, consistency: bool) -> pd.DataFrame:
    from ctray.tasks.cxr.encoder_model import class_values

    values = class_values(np.asarray(classes, dtype=np.int64).reshape(len(ids), -1),
                          OBSERVATIONS, consistency)
    return pd.DataFrame(values, index=pd.Index(ids, name="uid"), columns=list(OBSERVATIONS))


def write_chexpert_csv(frame: pd.DataFrame, path: str) -> str:
    out = frame.copy()
    for c in OBSERVATIONS:
        out[c] = out[c].map(lambda v: "" if pd.isna(v) else f"{float(v):.1f}")
    out.to_csv(path, index_label="uid")
    return path


def _export(src_model: str, target: str, metrics: dict[str, Any]) -> None:
    from ctray.tasks.cxr.encoder_model import META_FILE
    from ctray.train.common import export_dir

    def save(d: str) -> None:
        shutil.copytree(src_model, d, dirs_exist_ok=True)
        meta_path = os.path.join(d, META_FILE)
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        meta["metrics"] = metrics
        with open(meta_path, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)

    export_dir(target, save)


def mean_f1(gold: pd.DataFrame, preds: dict[str, pd.DataFrame]) -> dict[str, float]:
    from ctray.tasks.cxr.evaluation import f1_table

    ids = gold.index
    for p in preds.values():
        ids = ids.intersection(p.index)
    table = f1_table(gold.loc[ids], {n: p.loc[ids] for n, p in preds.items()})
    return {n: round(float(table.loc["Average", n]), 4) for n in preds}


def run_train_cxr_encoder(cfg: TrainCxrEncoderConfig) -> dict[str, Any]:
    from ctray.io.manifest import write_job_manifest
    from ctray.tasks.cxr.encoder_model import targets
    from ctray.tasks.cxr.span_teacher import build_span_set

    started = time.time()
    output, storage, _, export_to = run_locations(cfg)
    Path(output).mkdir(parents=True, exist_ok=True)
    base = resolve_encoder(cfg.model)
    if not (Path(base) / "config.json").is_file():
        raise UserError(f"{cfg.model} ({base}) is not a model folder (no config.json)")
    texts = read_texts(cfg.corpus)
    rules = read_label_table(cfg.labels)
    excluded = read_ids(cfg.exclude)
    train_df, val_df, data_stats = stage1_frames(cfg, texts, rules, excluded)
    dev_ids = sorted(excluded & set(texts.index))
    print(f"[train-cxr-encoder] stage 1 (rules): {len(train_df)} training / {len(val_df)} "
          f"held-out reports; {len(dev_ids)} excluded reports predicted; "
          f"{cfg.scaling.num_workers} worker(s)", flush=True)

    params = cfg.training.model_dump()
    s1_texts = train_df["text"].tolist() + val_df["text"].tolist() + [texts[i] for i in dev_ids]
    s1_y = np.concatenate([targets(train_df), targets(val_df),
                           np.zeros((len(dev_ids), len(OBSERVATIONS)), dtype=np.int64)])
    n_tr, n_val = len(train_df), len(val_df)
    unit = {"name": "rules", "train": list(range(n_tr)), "predict": [],
            "epochs": cfg.training.epochs, "export": True}
    extra = list(range(n_tr, n_tr + n_val + len(dev_ids)))
    if cfg.training.span_ratio > 0:
        spans = build_span_set(train_df["text"].tolist(), s1_y[:n_tr],
                               cfg.training.span_sentences, cfg.training.span_weight_power,
                               cfg.training.span_weight_max)
        first = len(s1_texts)
        s1_texts += spans.texts
        s1_y = np.concatenate([s1_y, spans.y])
        unit["spans"] = {"index": list(range(first, first + len(spans.texts))),
                         "p": spans.p.tolist(),
                         "per_epoch": int(round(cfg.training.span_ratio * n_tr))}
        data_stats["spans"] = {**spans.stats, "per_epoch": unit["spans"]["per_epoch"]}
        print(f"[train-cxr-encoder] rules as teacher on {len(spans.texts)} distinct spans of the "
              f"training reports; {unit['spans']['per_epoch']} drawn per epoch", flush=True)
    s1 = _run_stage(cfg, "rules", base, s1_texts, s1_y, [unit], extra, storage, params)
    pred = s1["state"]["predictions"]["rules"]
    classes = np.asarray(pred["classes"], dtype=np.int64)
    consistency = cfg.training.consistency
    val_pred = _values_frame(val_df["report_id"].tolist(), classes[:n_val], consistency)
    dev_pred = _values_frame(dev_ids, classes[n_val:], consistency)
    rules_idx = rules.copy()
    rules_idx.index.name = "uid"
    agreement = mean_f1(rules_idx.loc[val_pred.index], {"encoder": val_pred})["encoder"] \
        if n_val else None
    files = {"rules_stage_predictions": write_chexpert_csv(
        dev_pred, os.path.join(output, "rules_stage_predictions.csv"))}
    rules_model = os.path.join(output, "model_rules")
    history = list(s1["state"]["history"])
    s1_metrics = {"stage": "rules", "val_weighted_f1_vs_rules": agreement, "history": history,
                  "data": data_stats}
    _export(os.path.join(s1["dir"], "model"), rules_model, s1_metrics)
    summary: dict[str, Any] = {
        "job": cfg.job, "output": output, "model_dir": export_to, "rules_model_dir": rules_model,
        "encoder_source": cfg.model, "data": data_stats, "val_weighted_f1_vs_rules": agreement,
        "rules_stage_s": sum(h["train_s"] for h in history if h["stage"] == "rules"),
        "rules_stage_tokens_per_s": float(np.mean([h["train_tokens_per_s"] for h in history])),
        "rules_stage_resumed_from": s1["state"]["history"][0]["resumed_from"] if history else None,
    }

    gold_scores: dict[str, float] = {}
    gold = None
    if cfg.gold.labels is not None:
        gold = read_label_table(cfg.gold.labels)
        gold = gold[gold.index.isin(texts.index)]
        gold.index.name = "uid"
        gold_scores.update(mean_f1(gold, {"encoder_rules_only": dev_pred}))
        in_rules = gold.index.intersection(rules.index)
        if len(in_rules):
            gold_scores.update(mean_f1(gold.loc[in_rules], {"rules": rules.loc[in_rules]}))
        trained_on_gold = sorted(set(gold.index) & set(train_df["report_id"]))
        if trained_on_gold:
            raise UserError(f"{len(trained_on_gold)} gold reports are in the stage-1 training "
                            "data (add the gold file to exclude)")
        g_ids = sorted(gold.index)
        g_params = {**params, "encoder_lr": cfg.gold.encoder_lr, "head_lr": cfg.gold.head_lr,
                    "batch_size": cfg.gold.batch_size, "reading_loss": cfg.gold.loss == "reading"}
        if cfg.gold.class_weight_power is not None:
            g_params["class_weight_power"] = cfg.gold.class_weight_power
        units = fold_units(len(g_ids), cfg.gold.folds, cfg.training.seed, cfg.gold.epochs)
        print(f"[train-cxr-encoder] stage 2 (gold): {len(g_ids)} reports, {cfg.gold.folds}-fold "
              "cross-validation, then the full fit", flush=True)
        # Absolute: the Ray Train worker's working directory is not the driver's, so a
        # relative run.output (runs/...) named no folder there.
        s2_base = abs_uri(rules_model)
        s2 = _run_stage(cfg, "gold", s2_base, [texts[i] for i in g_ids],
                        targets(gold.loc[g_ids]), units, [], storage, g_params)
        cv = np.zeros((len(g_ids), len(OBSERVATIONS)), dtype=np.int64)
        scored = np.zeros(len(g_ids), dtype=np.int64)
        fold_of = {}
        for u in units[:-1]:
            p = s2["state"]["predictions"][u["name"]]
            cv[p["index"]] = np.asarray(p["classes"], dtype=np.int64)
            scored[p["index"]] += 1
            fold_of.update({g_ids[i]: u["name"] for i in p["index"]})
            assert not set(p["index"]) & set(u["train"])  # never scored by a model trained on it
        if not (scored == 1).all():
            raise RuntimeError("cross-validation did not score every gold report exactly once")
        cv_pred = _values_frame(g_ids, cv, consistency)
        files["cv_predictions"] = write_chexpert_csv(cv_pred, os.path.join(output,
                                                                           "cv_predictions.csv"))
        pd.Series(fold_of, name="fold").rename_axis("uid").to_csv(os.path.join(output,
                                                                                "cv_folds.csv"))
        gold_scores.update(mean_f1(gold, {"encoder_rules_gold_cv": cv_pred}))
        history += s2["state"]["history"]
        _export(os.path.join(s2["dir"], "model"), export_to,
                {"stage": "gold", "gold_reports": len(g_ids), "folds": cfg.gold.folds,
                 "gold_mean_weighted_f1": gold_scores, "rules_stage": s1_metrics,
                 "history": s2["state"]["history"]})
        shutil.rmtree(s2["dir"], ignore_errors=True)
        summary["gold_stage_s"] = sum(h["train_s"] for h in s2["state"]["history"])
    else:
        _export(rules_model, export_to, s1_metrics)
    shutil.rmtree(s1["dir"], ignore_errors=True)
    with open(os.path.join(output, "train_log.jsonl"), "w", encoding="utf-8") as f:
        for h in history:
            f.write(json.dumps(h) + "\n")
    summary.update({"gold_mean_weighted_f1": gold_scores, "files": files,
                    "use_gpu": use_gpu(cfg.scaling.use_gpu),
                    "num_workers": cfg.scaling.num_workers})
    write_job_manifest(cfg, started, **summary)
    print(f"[train-cxr-encoder] model in {export_to}; agreement with the rules on held-out "
          f"reports {agreement}; gold mean weighted F1 {gold_scores}; manifest "
          f"{output}/manifest.json", flush=True)
    return summary
