"""``ctray train-grounding``: train the text-prompted ``TextFiLMUNet`` with Ray Train.

Data: (volume, finding sentence, mask) triples from a manifest in the
``phantoms.write_phantom_set`` layout (``volume_uri``, ``finding_text``,
``mask_uri``, optional ``slope`` / ``intercept``). Each triple goes through the
project preprocessing (``build_preprocess`` with the mask as a label key, so
training sees exactly what ``segment`` feeds the model), is padded to the crop
size and cut into ``RandCropByPosNegLabeld`` crops; with the default ``pos=1,
neg=0`` every crop is centred on a voxel of its finding. No flips: the prompts
say "left" and "right".

Sentence embeddings come from ``TextEncoder`` (any Hugging Face encoder; tests use
``save_tiny_text_encoder``) and are computed once on the driver, since there are a
few thousand distinct sentences at most and the encoder is frozen.

Ray Train V2 (Ray 2.60) resumes a run that is started again with the same
``RunConfig(name, storage_path)``: ``ray.train.get_checkpoint()`` returns the last
epoch's checkpoint, so re-running after a kill (or with more epochs) continues
after the last finished epoch. Each rank trains on its own equal-length share of
the triples (cached per worker with ``cache_rate``), which keeps DDP steps in
lockstep. bf16 autocast runs on CUDA only. The last epoch is exported as a model
directory ``segment`` loads (``segment_job.save_grounding_model``).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ctray.config import JobConfig
from ctray.errors import UserError
from ctray.tasks.grounding.preprocess import PreprocessConfig
from ctray.tasks.grounding.segment_job import ManifestInput
from ctray.train.common import (CheckpointParams, ScalingParams, export_dir, gather,
                                 prepare_run)

IMAGE, LABEL, EMB = "image", "label", "text_embedding"


class TrainManifestInput(ManifestInput):
    mask_column: str = Field("mask_uri", description="column holding the ground-truth mask URI")


class ModelParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    features: tuple[int, int, int, int, int, int] = Field(
        (16, 16, 32, 64, 128, 16), description="BasicUNet widths (conv_0, down_1..4, final "
        "upcat); MONAI's default is (32, 32, 64, 128, 256, 32).")
    init_from: str | None = Field(None, description="an earlier export to fine-tune")


class GroundingTrainingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(50, description="passes over the training triples")
    learning_rate: float = Field(1e-4, description="AdamW learning rate")
    weight_decay: float = Field(1e-5, description="AdamW weight decay")
    batch_size: int = Field(2, description="triples per worker per step (each gives num_samples "
                            "crops)")
    crop_size: tuple[int, int, int] = Field(
        (96, 96, 96), description="BasicUNet halves the grid four times: every crop side must be "
        "a multiple of 16.")
    num_samples: int = Field(2, description="crops per triple and epoch")
    pos: float = Field(1.0, description="positive-crop weight of the crop sampler")
    neg: float = Field(0.0, description="negative-crop weight of the crop sampler")
    cache_rate: float = Field(0.0, description="share of this rank's triples kept preprocessed in "
                              "memory")
    loader_workers: int = Field(0, description="DataLoader worker processes per rank")
    seed: int = Field(0, description="seed of crops, shuffling and initialisation")
    mixed_precision: Literal["auto", "bf16", "no"] = Field(
        "auto", description="auto: bf16 where supported, else full precision")
    max_grad_norm: float = Field(1.0, description="gradient clipping norm")
    log_every_steps: int = Field(0, description="log the loss every N steps (0: per epoch only)")


class GroundingCheckpoint(CheckpointParams):
    name: str = "train_grounding"


class TrainGroundingConfig(JobConfig):
    job: str = "train-grounding"
    manifest: TrainManifestInput = Field(
        description="the (volume, finding text, mask) triples to train on")
    text_encoder: str = Field(
        "all-minilm-l6-v2", description="sentence encoder: packaged name (all-minilm-l6-v2, the "
        "offline default), HF id, local or s3:// directory")
    text_max_length: int = Field(128, description="tokens per finding text")
    text_normalize: bool = Field(False, description="L2-normalise the text embedding")
    preprocess: PreprocessConfig = Field(
        default_factory=PreprocessConfig, description="volume preprocessing (recorded in the "
        "export)")
    model: ModelParams = Field(
        default_factory=ModelParams, description="network widths and initialisation")
    training: GroundingTrainingParams = Field(
        default_factory=GroundingTrainingParams, description="optimizer, crops and schedule")
    scaling: ScalingParams = Field(
        default_factory=ScalingParams, description="Ray Train workers and their resources")
    checkpoint: GroundingCheckpoint = Field(
        default_factory=GroundingCheckpoint, description="checkpoint folder and retention")
    export: str | None = Field(None, description="default <run.output>/model")


# ----------------------------------------------------------------------------- data

def load_triples(cfg: TrainGroundingConfig) -> tuple[list[dict[str, Any]], int]:
    """Training items (image/label URIs, slope, intercept, embedding) and the text width."""
    from ctray.tasks.grounding.model import TextEncoder
    from ctray.tasks.grounding.segment_job import (INTERCEPT, SLOPE, TEXT, VOLUME, absolute_local,
                                                   read_manifest)

    df = read_manifest(cfg.manifest)
    # read_manifest renames a `mask_uri` input column so it is not taken for a prediction.
    mask_col = "gt_mask_uri" if cfg.manifest.mask_column == "mask_uri" else cfg.manifest.mask_column
    if mask_col not in df:
        raise UserError(f"{cfg.manifest.path}: no mask column {cfg.manifest.mask_column!r}")
    df = df[df[mask_col].notna() & df[TEXT].notna()]
    if df.empty:
        raise UserError(f"{cfg.manifest.path}: no row with a finding text and a mask")
    encoder = TextEncoder(cfg.text_encoder, max_length=cfg.text_max_length,
                          normalize=cfg.text_normalize)
    texts = df[TEXT].astype(str).tolist()
    emb = encoder.encode(texts).numpy()
    items = [{IMAGE: v, LABEL: absolute_local(str(m)), "slope": s, "intercept": b, EMB: e}
             for v, m, s, b, e in zip(df[VOLUME], df[mask_col], df[SLOPE], df[INTERCEPT], emb)]
    return items, encoder.dim


def _load_pair_transform():
    """MONAI map transform: ctray's reader (fsspec URIs, VolumeReadError naming the
    file) → the dict ``build_preprocess`` expects, mask as the ``label`` key."""
    from monai.transforms import MapTransform

    from ctray.io.volumes import load_volume
    from ctray.tasks.grounding.preprocess import make_item

    class LoadPaird(MapTransform):
        def __init__(self):
            super().__init__([IMAGE, LABEL])

        def __call__(self, data):
            volume, affine, _ = load_volume(data[IMAGE])
            mask, _, _ = load_volume(data[LABEL])
            if mask.shape != volume.shape:
                raise UserError(f"mask {data[LABEL]} has shape {mask.shape}, its volume "
                                f"{data[IMAGE]} {volume.shape}")
            item = make_item(volume, affine, data.get("slope"), data.get("intercept"),
                             labels={LABEL: (mask > 0).astype(np.float32)})
            item[EMB] = np.array(data[EMB], dtype=np.float32)  # a copy: ray.get arrays are read-only
            return item

    return LoadPaird()


def build_train_transform(preprocess: PreprocessConfig, params: GroundingTrainingParams):
    """Flat ``Compose`` (CacheDataset caches up to the first random step): load →
    project preprocessing → pad to the crop → random crops around the finding."""
    from monai.transforms import (Compose, DeleteItemsd, EnsureTyped, RandCropByPosNegLabeld,
                                  SpatialPadd)

    from ctray.tasks.grounding.preprocess import INTERCEPT_KEY, SLOPE_KEY, build_preprocess

    pre = build_preprocess(preprocess, label_keys=[LABEL])
    return Compose([
        _load_pair_transform(), *pre.transforms,
        # None-valued keys do not collate.
        DeleteItemsd([SLOPE_KEY, INTERCEPT_KEY]),
        SpatialPadd([IMAGE, LABEL], spatial_size=params.crop_size),
        EnsureTyped([IMAGE, LABEL, EMB], track_meta=False),
        RandCropByPosNegLabeld([IMAGE, LABEL], label_key=LABEL, spatial_size=params.crop_size,
                               pos=params.pos, neg=params.neg, num_samples=params.num_samples),
    ])


def shard(items: list, rank: int, world: int) -> list:
    """Rank ``rank``'s share, all shares of equal length (wrapping around like
    DistributedSampler's padding) so every rank runs the same number of DDP steps."""
    per_rank = math.ceil(len(items) / world)
    return [items[(rank + k * world) % len(items)] for k in range(per_rank)]


# ----------------------------------------------------------------------------- worker side

def _autocast(mode: str, device):
    import contextlib

    import torch

    if device.type == "cuda" and mode != "no" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    import ray
    import ray.train
    import ray.train.torch
    import torch
    from monai.data import CacheDataset, DataLoader, list_data_collate

    from ctray.tasks.grounding.model import TextFiLMUNet, grounding_loss

    params = GroundingTrainingParams(**config["training"])
    preprocess = PreprocessConfig(**config["preprocess"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(params.seed)
    items, text_dim = ray.get(config["data"])
    device = ray.train.torch.get_device()

    model = TextFiLMUNet(text_dim, features=tuple(config["features"]))
    checkpoint = ray.train.get_checkpoint()
    start_epoch, state = 0, None
    if checkpoint:
        with checkpoint.as_directory() as d:
            model.load_state_dict(torch.load(os.path.join(d, "model.pt"), map_location="cpu",
                                             weights_only=True))
            state = torch.load(os.path.join(d, "train_state.pt"), map_location="cpu",
                               weights_only=False)
        start_epoch = int(state["epoch"])
    elif config.get("init_from"):
        from ctray.tasks.grounding.model_dir import load_grounding_model

        model.load_state_dict(load_grounding_model(config["init_from"])[0].state_dict())
    model = ray.train.torch.prepare_model(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.learning_rate,
                                  weight_decay=params.weight_decay)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
    history: list[dict] = list(state.get("history", [])) if state is not None else []

    transform = build_train_transform(preprocess, params)
    dataset = CacheDataset(shard(items, rank, world), transform, cache_rate=params.cache_rate,
                           num_workers=1, progress=False)
    generator = torch.Generator()
    loader = DataLoader(dataset, batch_size=params.batch_size, shuffle=True,
                        num_workers=params.loader_workers, collate_fn=list_data_collate,
                        generator=generator)
    loss_fn = grounding_loss()
    epochs_run: list[int] = []

    for epoch in range(start_epoch, params.epochs):
        # Seeded per (rank, epoch): a resumed run draws the crops a continuous one would.
        generator.manual_seed(params.seed * 1_000_003 + 7919 * rank + epoch)
        transform.set_random_state(seed=(params.seed + 104_729 * rank + epoch) % 2**32)
        model.train()
        started, seen, loss_sum = time.time(), 0, 0.0
        for step, batch in enumerate(loader):
            image = torch.as_tensor(batch[IMAGE]).to(device)
            label = torch.as_tensor(batch[LABEL]).to(device)
            emb = torch.as_tensor(batch[EMB]).to(device)
            with _autocast(params.mixed_precision, device):
                logits = model(image, emb)
            loss = loss_fn(logits.float(), label)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), params.max_grad_norm)
            optimizer.step()
            seen += len(image)
            loss_sum += float(loss.detach()) * len(image)
            if rank == 0 and params.log_every_steps and (step + 1) % params.log_every_steps == 0:
                print(f"[train-grounding] epoch {epoch + 1}/{params.epochs} step {step + 1}/"
                      f"{len(loader)} loss {loss_sum / seen:.4f}", flush=True)
        ranks = np.stack(gather(np.array([seen, loss_sum, time.time() - started]), world))
        totals = ranks.sum(axis=0)
        metrics = {"epoch": epoch + 1, "train_loss": float(totals[1] / max(totals[0], 1)),
                   "train_crops": int(totals[0]), "resumed_from_epoch": start_epoch,
                   "train_s": float(ranks[:, 2].max()),
                   "train_crops_per_s": float(totals[0] / max(ranks[:, 2].max(), 1e-9))}
        history.append(metrics)
        epochs_run.append(epoch + 1)
        if rank == 0:
            print(f"[train-grounding] epoch {epoch + 1}/{params.epochs}: loss "
                  f"{metrics['train_loss']:.4f} over {metrics['train_crops']} crops", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                torch.save(getattr(model, "module", model).state_dict(),
                           os.path.join(tmp, "model.pt"))
                torch.save({"epoch": epoch + 1, "optimizer": optimizer.state_dict(),
                            "history": history}, os.path.join(tmp, "train_state.pt"))
                with open(os.path.join(tmp, "history.json"), "w") as f:
                    json.dump(history, f, indent=1)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt)
    return {"start_epoch": start_epoch + 1, "epochs_run": epochs_run}


# ----------------------------------------------------------------------------- driver side

def _fingerprint(cfg: TrainGroundingConfig) -> dict[str, Any]:
    # epochs may grow on resume; logging and loader settings do not change the result.
    training = cfg.training.model_dump(mode="json", exclude={"epochs", "log_every_steps",
                                                             "loader_workers"})
    return {"manifest": cfg.manifest.model_dump(mode="json"), "text_encoder": cfg.text_encoder,
            "text_max_length": cfg.text_max_length, "text_normalize": cfg.text_normalize,
            "preprocess": cfg.preprocess.model_dump(mode="json"),
            "model": cfg.model.model_dump(mode="json"), "training": training}


def export_model(result, cfg: TrainGroundingConfig, text_dim: int, export_to: str) -> dict:
    import torch

    from ctray.tasks.grounding.model_dir import GroundingModelMeta, save_grounding_model

    if result.checkpoint is None:
        raise RuntimeError("training reported no checkpoint")
    with result.checkpoint.as_directory() as d:
        state = torch.load(os.path.join(d, "model.pt"), map_location="cpu", weights_only=True)
        with open(os.path.join(d, "history.json"), encoding="utf-8") as f:
            history = json.load(f)
    from ctray.models.encoders import resolve_encoder_source

    # A packaged encoder resolves to its unzipped folder, which the export then copies.
    encoder = resolve_encoder_source(cfg.text_encoder)
    if Path(encoder).exists():
        encoder = str(Path(encoder).resolve())
    meta = GroundingModelMeta(
        text_encoder=encoder, text_dim=text_dim, features=cfg.model.features,
        text_max_length=cfg.text_max_length, text_normalize=cfg.text_normalize,
        preprocess=cfg.preprocess, roi_size=cfg.training.crop_size,
        metrics={"epochs": len(history), "final_train_loss": history[-1]["train_loss"],
                 "history": history, "source_checkpoint": result.checkpoint.path})
    export_dir(export_to, lambda d: save_grounding_model(d, state, meta))
    return meta.model_dump(mode="json")


def run_train_grounding(cfg: TrainGroundingConfig) -> dict[str, Any]:
    import ray

    from ctray.io.manifest import write_job_manifest

    crop = cfg.training.crop_size
    if any(s % 16 for s in crop) or math.prod(s // 16 for s in crop) < 2:
        raise UserError(f"training.crop_size {crop}: every side must be a multiple of 16 and "
                        "one at least 32 (the U-Net halves the grid four times and instance "
                        "norm needs more than one voxel at the bottleneck)")
    started = time.time()
    items, text_dim = load_triples(cfg)
    run = prepare_run(cfg, _fingerprint(cfg),
                      "data, encoder, preprocessing, model or hyperparameters")
    output, run_dir, export_to, gpu = run.output, run.run_dir, run.export_to, run.gpu
    print(f"[train-grounding] {len(items)} (volume, finding, mask) triples, "
          f"{cfg.scaling.num_workers} worker(s)")
    trainer = run.trainer(cfg, train_loop_per_worker,
                          {"training": cfg.training.model_dump(),
                           "features": list(cfg.model.features),
                           "preprocess": cfg.preprocess.model_dump(),
                           "init_from": cfg.model.init_from, "data": ray.put((items, text_dim))})
    result = trainer.fit()
    meta = export_model(result, cfg, text_dim, export_to)
    run_info = result.return_value or {}
    history = meta["metrics"]["history"]
    summary = {
        "job": cfg.job, "output": output, "model_dir": export_to, "checkpoints": run_dir,
        "started_at_epoch": run_info.get("start_epoch"), "epochs_run": run_info.get("epochs_run"),
        "history": history, "final_train_loss": history[-1]["train_loss"],
        "triples": len(items), "use_gpu": gpu, "num_workers": cfg.scaling.num_workers,
    }
    write_job_manifest(cfg, started, **summary, fingerprint=_fingerprint(cfg))
    print(f"[train-grounding] final loss {summary['final_train_loss']:.4f} after epoch "
          f"{len(history)}; model in {export_to}; manifest {output}/manifest.json")
    return summary
