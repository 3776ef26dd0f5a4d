"""The CT-BERT-style findings classifier: long-report encoding, pooling, export, loading.

A report longer than the encoder's window is not truncated (CT-RATE findings often
run past 512 sub-words, and a truncated tail loses findings such as effusions that
radiologists list last): it is cut into overlapping windows, every window is
scored, and the report's logit per finding is the maximum over its windows (a
finding is present if any part of the report states it). Training
(``ctray.tasks.findings.train_job``) and inference share these functions, so the
model is trained on exactly what it sees at inference.

An exported model directory holds the Hugging Face model and tokenizer
(``save_pretrained``) plus ``ctray_findings.json`` (label order, per-finding
thresholds, window settings, training metrics). :class:`FindingsClassifier` loads it
for batch inference and for Ray Serve; keep its public API stable.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ctray.models.windows import (DEFAULT_MAX_LENGTH, DEFAULT_STRIDE, encode_reports, max_pool,
                                  pad_chunks)
from ctray.tasks.findings.schema import FINDING_COLUMNS, FINDING_NAMES

log = logging.getLogger(__name__)

META_FILE = "ctray_findings.json"
META_FORMAT = "ctray-findings/1"


@dataclass
class FindingsModelMeta:
    """What ``ctray_findings.json`` records next to the weights."""

    labels: list[str] = field(default_factory=lambda: list(FINDING_NAMES))
    columns: list[str] = field(default_factory=lambda: list(FINDING_COLUMNS))
    thresholds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(FINDING_COLUMNS, 0.5))
    max_length: int = DEFAULT_MAX_LENGTH
    stride: int = DEFAULT_STRIDE
    base_model: str | None = None
    source_checkpoint: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    format: str = META_FORMAT

    def threshold_array(self) -> np.ndarray:
        return np.array([float(self.thresholds.get(c, 0.5)) for c in self.columns])

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FindingsModelMeta":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        meta = cls(**known)
        if len(meta.labels) != len(meta.columns):
            raise ValueError(f"{META_FILE}: {len(meta.labels)} labels but {len(meta.columns)} columns")
        return meta

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- long reports: windows and pooling -------------------------------------------------


def report_logits(model, tokenizer, texts: Sequence[str], max_length: int, stride: int,
                  device, chunk_batch_size: int = 16):
    """(max-pooled logits [n_reports, num_labels], windows per report). Gradient mode
    and autocast are the caller's choice."""
    import torch

    enc = encode_reports(tokenizer, texts, max_length, stride)
    # Sorting windows by length keeps padding (wasted compute) low within a batch.
    order = sorted(range(len(enc.chunks)), key=lambda i: len(enc.chunks[i]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    parts = []
    for start in range(0, len(order), chunk_batch_size):
        idx = order[start:start + chunk_batch_size]
        ids, mask = pad_chunks([enc.chunks[i] for i in idx], pad_id)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        parts.append((torch.as_tensor(idx), logits.float()))
    logits = torch.empty((len(enc.chunks), parts[0][1].shape[1]), device=parts[0][1].device)
    for idx, part in parts:
        logits[idx.to(logits.device)] = part
    owner = torch.as_tensor(enc.owner, device=logits.device)
    return max_pool(logits, owner, len(texts)), enc.windows()


# -- storage ---------------------------------------------------------------------------

# Moved to the io layer (segment loads models too); kept importable from here.


def save_findings_model(out_dir: str | Path, model, tokenizer, meta: FindingsModelMeta) -> Path:
    """Export weights + tokenizer + ``ctray_findings.json`` (loadable by ``from_pretrained``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)  # unwrap DDP
    model.config.id2label = dict(enumerate(meta.labels))
    model.config.label2id = {n: i for i, n in enumerate(meta.labels)}
    model.config.problem_type = "multi_label_classification"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / META_FILE).write_text(json.dumps(meta.to_dict(), indent=2, ensure_ascii=False),
                                 encoding="utf-8")
    return out


def load_meta(path: str | Path, num_labels: int | None = None) -> FindingsModelMeta:
    file = Path(path) / META_FILE
    if file.exists():
        return FindingsModelMeta.from_dict(json.loads(file.read_text(encoding="utf-8")))
    if num_labels not in (None, len(FINDING_NAMES)):
        raise ValueError(f"{path} has no {META_FILE} and {num_labels} labels, not the 18 CT-RATE "
                         "findings: export it with ctray train-findings")
    log.warning("%s has no %s: assuming the 18 CT-RATE findings in order, thresholds 0.5",
                path, META_FILE)
    return FindingsModelMeta()


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class FindingsClassifier:
    """Multi-label classifier of the 18 CT-RATE findings from report text.

    >>> clf = FindingsClassifier.from_pretrained("runs/train_findings/model")
    >>> labels, probs = clf.predict(["No pleural effusion. Small left lung nodule."])
    """

    def __init__(self, model, tokenizer, meta: FindingsModelMeta, device: str = "cpu",
                 chunk_batch_size: int = 16):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.meta = meta
        self.device = device
        self.chunk_batch_size = chunk_batch_size
        # Windows per report in the last call (>1: the report was longer than max_length).
        self.last_windows = np.zeros(0, dtype=np.int64)

    @classmethod
    def from_pretrained(cls, path: str, device: str | None = None,
                        chunk_batch_size: int = 16, dtype: str | None = None,
                        cache_dir: str | None = None) -> "FindingsClassifier":
        """Load an exported directory (local or ``s3://``/``gs://``) or any HF model id.

        ``device``: None picks CUDA when available. ``dtype``: e.g. "bfloat16" to
        halve GPU memory (probabilities are computed in float32 either way)."""
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from ctray.models.encoders import resolve_encoder_source

        local = resolve_encoder_source(path, cache_dir=cache_dir)
        device = device or default_device()
        tokenizer = AutoTokenizer.from_pretrained(local)
        kwargs: dict[str, Any] = {"problem_type": "multi_label_classification"}
        if dtype:
            kwargs["dtype"] = getattr(torch, dtype)
        model = AutoModelForSequenceClassification.from_pretrained(local, **kwargs)
        meta = load_meta(local, model.config.num_labels)
        if model.config.num_labels != len(meta.labels):
            raise ValueError(f"{path}: model has {model.config.num_labels} outputs but "
                             f"{META_FILE} lists {len(meta.labels)} labels")
        return cls(model.to(device), tokenizer, meta, device, chunk_batch_size)

    @property
    def label_names(self) -> list[str]:
        return list(self.meta.labels)

    @property
    def columns(self) -> list[str]:
        return list(self.meta.columns)

    @property
    def last_n_chunked(self) -> int:
        return int(np.sum(self.last_windows > 1))

    @property
    def thresholds(self) -> np.ndarray:
        return self.meta.threshold_array()

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Probabilities [n, 18] (sigmoid of the max-pooled logits), CT-RATE order."""
        import torch

        texts = list(texts)
        if not texts:
            return np.zeros((0, len(self.meta.labels)), dtype=np.float32)
        with torch.inference_mode(), _autocast(self.device):
            logits, self.last_windows = report_logits(
                self.model, self.tokenizer, texts, self.meta.max_length, self.meta.stride,
                self.device, self.chunk_batch_size)
        return torch.sigmoid(logits).cpu().numpy().astype(np.float32)

    def predict(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(labels int [n, 18] using the per-finding thresholds, probabilities [n, 18])."""
        probs = self.predict_proba(texts)
        return (probs >= self.thresholds[None, :]).astype(np.int64), probs


def _autocast(device: str):
    """bf16/fp16 autocast on CUDA only; CPU autocast slows BERT down and changes results."""
    import contextlib

    import torch

    if not str(device).startswith("cuda"):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)
