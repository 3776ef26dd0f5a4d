"""The CheXbert-style CXR encoder labeler: a BERT-architecture encoder with one head per
observation (4-way blank / positive / negative / uncertain for the 13 pathologies and
Support Devices, 2-way blank / positive for No Finding, as CheXbert).

Pooling. The default (``attention``) gives every observation its own learned query over
the report's token states (label-wise attention): a head reads the tokens that mention
its observation instead of one [CLS] vector shared by all 14 heads, which is what let the
frequent observations drown the rare ones in a first try (Lung Lesion, Pleural Other,
Fracture and Support Devices never predicted). ``mean`` (sentence-transformers' pooling,
what all-MiniLM-L6-v2 was trained with) and ``cls`` are kept for comparison.

Long reports. A report longer than the encoder's window is cut into overlapping windows
(``ctray.tasks.findings.model.window_token_ids``, shared with train-findings) and the
pooling runs over the tokens of all its windows together (mean / attention) or over its
windows' [CLS] vectors (cls), so no report is ever truncated; ``last_windows`` counts
them. Training and inference share :func:`report_logits`.

An exported folder holds the encoder and tokenizer (``save_pretrained``, so the folder
also loads as a plain HF encoder), ``cxr_heads.safetensors`` (queries and heads) and
``ctray_cxr_encoder.json`` (observations, classes, pooling, window settings, training
metrics). :class:`CXREncoderLabeler` loads it for ``label-cxr --labeler encoder`` and
Ray Serve; keep ``load`` / ``label`` stable.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from ctray.tasks.cxr.schema import BLANK, NEGATIVE, OBSERVATIONS, POSITIVE, UNCERTAIN

META_FILE = "ctray_cxr_encoder.json"
HEADS_FILE = "cxr_heads.safetensors"
META_FORMAT = "ctray-cxr-encoder/1"
# Class index -> CheXpert value, CheXbert's order (blank first).
CLASS_VALUES: tuple[float, ...] = (BLANK, POSITIVE, NEGATIVE, UNCERTAIN)
NO_FINDING = "No Finding"
PATHOLOGIES = tuple(o for o in OBSERVATIONS if o not in (NO_FINDING, "Support Devices"))
LUNG_OPACITY_CHILDREN = ("Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis")
Pooling = Literal["attention", "mean", "cls"]


def n_classes(observation: str) -> int:
    return 2 if observation == NO_FINDING else 4


def class_index(value: Any) -> int:
    """CheXpert value (1.0 / 0.0 / -1.0 / NaN) -> class index of its head."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return 0
    return {POSITIVE: 1, NEGATIVE: 2, UNCERTAIN: 3}[float(value)]


def targets(frame, observations: Sequence[str] = OBSERVATIONS) -> np.ndarray:
    """[n_reports, 14] class indices from a frame of CheXpert values. No Finding's 0 / -1
    (which the conventions never use) count as blank, so its head stays 2-way."""
    out = np.zeros((len(frame), len(observations)), dtype=np.int64)
    for j, obs in enumerate(observations):
        idx = np.array([class_index(v) for v in frame[obs].tolist()], dtype=np.int64)
        if n_classes(obs) == 2:
            idx = np.where(idx == 1, 1, 0)
        out[:, j] = idx
    return out


def inverse_frequency(counts: np.ndarray, power: float, cap: float) -> np.ndarray:
    """Per-class weights (n_most_frequent / n_class) ** power, at most ``cap``; a class
    absent from the counts counts as one example. The loss weights of a head and the
    sampling weights of rule-labelled spans both use it."""
    return np.minimum((counts.max() / np.maximum(counts, 1.0)) ** power, cap)


@dataclass
class EncoderMeta:
    """What ``ctray_cxr_encoder.json`` records next to the weights."""

    observations: list[str] = field(default_factory=lambda: list(OBSERVATIONS))
    pooling: str = "attention"
    max_length: int = 256
    stride: int = 64
    head_dropout: float = 0.1
    # Apply the two structural conventions of docs/cxr_labeling.md to the predictions
    # (Lung Opacity takes a positive child; No Finding only without a positive or
    # uncertain pathology), as the rules and the gold set do.
    consistency: bool = True
    # How a report's pathology labels are read off the heads (:func:`predict_classes`):
    # "sentences" labels each sentence and aggregates them by the mention precedence of
    # docs/cxr_labeling.md; "report" takes the heads' answer for the whole report.
    # Folders exported before this field existed read "report", as they were evaluated.
    aggregation: str = "report"
    base_model: str | None = None
    stage: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    format: str = META_FORMAT

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EncoderMeta":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        meta = cls(**known)
        if meta.format != META_FORMAT:
            raise ValueError(f"{META_FILE}: format {meta.format!r}, expected {META_FORMAT!r}")
        unknown = [o for o in meta.observations if o not in OBSERVATIONS]
        if unknown:
            raise ValueError(f"{META_FILE}: unknown observations {unknown}")
        return meta

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _torch_module():
    import torch

    class CXREncoderNet(torch.nn.Module):
        """Encoder + per-observation pooling + heads; ``forward`` returns one logits
        tensor [n_reports, classes] per observation."""

        def __init__(self, encoder, meta: EncoderMeta):
            super().__init__()
            hidden = encoder.config.hidden_size
            self.encoder = encoder
            self.meta = meta
            self.pooling = meta.pooling
            n_obs = len(meta.observations)
            generator = torch.Generator().manual_seed(0)
            # Zero queries start as mean pooling (uniform attention), the encoder's own
            # pretraining pooling; each head then learns where to look.
            self.queries = (torch.nn.Parameter(torch.zeros(n_obs, hidden))
                            if self.pooling == "attention" else None)
            self.dropout = torch.nn.Dropout(meta.head_dropout)
            self.heads = torch.nn.ModuleList(
                torch.nn.Linear(hidden, n_classes(o)) for o in meta.observations)
            for head in self.heads:
                torch.nn.init.normal_(head.weight, std=0.02, generator=generator)
                torch.nn.init.zeros_(head.bias)

        def head_parameters(self):
            return [p for p in (self.queries, *self.heads.parameters()) if p is not None]

        def pooled(self, input_ids, attention_mask, owner, n_reports: int):
            """[n_reports, n_obs, hidden] (attention) or [n_reports, 1, hidden]."""
            states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            hidden = states.shape[-1]
            if self.pooling == "cls":
                cls = states[:, 0]
                out = torch.zeros((n_reports, hidden), dtype=cls.dtype, device=cls.device)
                out.index_add_(0, owner, cls)
                count = torch.bincount(owner, minlength=n_reports).clamp(min=1).to(cls.dtype)
                return (out / count[:, None])[:, None, :]
            mask = attention_mask.bool().reshape(-1)
            flat = states.reshape(-1, hidden)[mask]  # every real token of every window
            token_owner = owner[:, None].expand_as(attention_mask).reshape(-1)[mask]
            if self.pooling == "mean":
                out = torch.zeros((n_reports, hidden), dtype=flat.dtype, device=flat.device)
                out.index_add_(0, token_owner, flat)
                count = torch.bincount(token_owner, minlength=n_reports).clamp(min=1).to(flat.dtype)
                return (out / count[:, None])[:, None, :]
            # Label-wise attention: softmax over all tokens of a report (all its windows).
            scores = flat @ self.queries.t() / math.sqrt(hidden)  # [tokens, n_obs]
            index = token_owner[:, None].expand_as(scores)
            top = torch.full((n_reports, scores.shape[1]), float("-inf"), dtype=scores.dtype,
                             device=scores.device)
            top = top.scatter_reduce(0, index, scores, reduce="amax", include_self=True)
            weights = torch.exp(scores - top[token_owner])
            total = torch.zeros_like(top).index_add_(0, token_owner, weights)
            weights = weights / total[token_owner]
            out = torch.zeros((n_reports, scores.shape[1], hidden), dtype=flat.dtype,
                              device=flat.device)
            out.index_add_(0, token_owner, weights[:, :, None] * flat[:, None, :])
            return out

        def forward(self, input_ids, attention_mask, owner, n_reports: int):
            pooled = self.dropout(self.pooled(input_ids, attention_mask, owner, n_reports))
            k = pooled.shape[1]
            return [head(pooled[:, j if k > 1 else 0]) for j, head in enumerate(self.heads)]

    return CXREncoderNet


def build_net(encoder, meta: EncoderMeta):
    return _torch_module()(encoder, meta)


def encode_batch(tokenizer, texts: Sequence[str], max_length: int, stride: int):
    """(input_ids, attention_mask, owner, windows per report) for a list of reports."""
    import torch

    from ctray.models.windows import encode_reports, pad_chunks

    enc = encode_reports(tokenizer, texts, max_length, stride)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids, mask = pad_chunks(enc.chunks, pad)
    return ids, mask, torch.as_tensor(enc.owner, dtype=torch.long), enc.windows()


def report_logits(net, tokenizer, texts: Sequence[str], device, batch_size: int = 32):
    """Per observation, logits [n_reports, classes], and windows per report. Reports go
    through in length-sorted batches (little padding); gradient mode is the caller's."""
    import torch

    texts = list(texts)
    lengths = [len(t or "") for t in texts]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    parts: list[list] = [[] for _ in net.meta.observations]
    windows = np.zeros(len(texts), dtype=np.int64)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        ids, mask, owner, win = encode_batch(tokenizer, [texts[i] for i in idx],
                                             net.meta.max_length, net.meta.stride)
        windows[idx] = win
        logits = net(ids.to(device), mask.to(device), owner.to(device), len(idx))
        for j, lg in enumerate(logits):
            parts[j].append(lg.float())
    inverse = torch.as_tensor(np.argsort(order), dtype=torch.long)
    out = [torch.cat(p)[inverse.to(p[0].device)] for p in parts]
    return out, windows


# Mention precedence of docs/cxr_labeling.md (1 beats -1 beats 0 beats blank), by class
# index (blank, positive, negative, uncertain), and its inverse.
_PRECEDENCE = np.array([0, 3, 1, 2])
_BY_PRECEDENCE = np.argsort(_PRECEDENCE)


def aggregate_mentions(classes: np.ndarray, owner: np.ndarray, n_reports: int) -> np.ndarray:
    """[n_sentences, heads] class indices -> [n_reports, heads]: per report and head the
    strongest class among its sentences (positive > uncertain > negative > blank)."""
    rank = np.zeros((n_reports, classes.shape[1]), dtype=np.int64)
    np.maximum.at(rank, np.asarray(owner, dtype=np.int64), _PRECEDENCE[classes])
    return _BY_PRECEDENCE[rank]


def mention_log_probs(sentence_logits, owner, n_reports: int):
    """Per head, log P(report class) [n_reports, classes] when a report's class is the
    strongest of its sentences' classes (:func:`aggregate_mentions`) and each sentence's
    class is drawn from its softmax: P(report >= r) = 1 - prod_s (1 - P(sentence s >= r))
    on the precedence scale blank < negative < uncertain < positive. Trains the sentence
    reading on report-level labels (the gold stage): the loss sees what inference reads."""
    import torch

    out = []
    for lg in sentence_logits:
        probs = lg.float().softmax(dim=1)
        rank = torch.as_tensor(_PRECEDENCE[:probs.shape[1]], device=probs.device)
        levels = int(rank.max()) + 1
        # at_least[:, r] = P(sentence >= r), r = 1 .. levels-1
        by_rank = torch.zeros((probs.shape[0], levels), dtype=probs.dtype, device=probs.device)
        by_rank.index_add_(1, rank, probs)
        at_least = by_rank.flip(1).cumsum(1).flip(1)[:, 1:]
        log_none = torch.log((1 - at_least).clamp(min=1e-6))
        summed = torch.zeros((n_reports, levels - 1), dtype=probs.dtype, device=probs.device)
        summed.index_add_(0, owner, log_none)
        report_at_least = torch.cat([torch.ones((n_reports, 1), dtype=probs.dtype,
                                                device=probs.device),
                                     1 - summed.exp(),
                                     torch.zeros((n_reports, 1), dtype=probs.dtype,
                                                 device=probs.device)], dim=1)
        exact = (report_at_least[:, :-1] - report_at_least[:, 1:]).clamp(min=1e-8)
        out.append(exact[:, rank].log())
    return out


class ReadingCache:
    """What a labeler has already read: each sentence's classes and each report's No
    Finding class, by exact text, least recently used dropped past ``max_entries``.
    Exact, because a sentence's label depends on its text alone, and worth it because
    clinical reports are boilerplate: Open-i's 3,826 reports hold 23,631 sentences but
    8,300 distinct ones, and 760 reports repeat another word for word; a corpus job
    (batch after batch on one actor) and a Serve replica both meet them again."""

    def __init__(self, max_entries: int = 100_000):
        from collections import OrderedDict

        self.max_entries = max_entries
        self._tables: dict[str, OrderedDict] = {"sentence": OrderedDict(),
                                                "report": OrderedDict()}
        self.hits = 0
        self.misses = 0

    def known(self, table: str, keys: Sequence[str]) -> dict[str, Any]:
        memo = self._tables[table]
        found = {}
        for k in keys:
            if k in memo:
                memo.move_to_end(k)
                found[k] = memo[k]
        self.hits += len(found)
        self.misses += len(keys) - len(found)
        return found

    def add(self, table: str, items: dict[str, Any]) -> None:
        memo = self._tables[table]
        memo.update(items)
        while len(memo) > self.max_entries:
            memo.popitem(last=False)


def _read_once(keys: list[str], cache: ReadingCache | None, table: str, compute) -> dict:
    """``{key: value}`` for the distinct ``keys``, computing (``compute(list)`` -> rows)
    only those the cache has not seen."""
    distinct = list(dict.fromkeys(keys))
    found = cache.known(table, distinct) if cache is not None else {}
    todo = [k for k in distinct if k not in found]
    if todo:
        new = dict(zip(todo, compute(todo)))
        if cache is not None:
            cache.add(table, new)
        found.update(new)
    return found


def predict_classes(net, tokenizer, texts: Sequence[str], device, batch_size: int = 32,
                    cache: ReadingCache | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Class index per report and observation [n, heads], and windows per report.

    ``meta.aggregation == "sentences"``: every sentence is labelled on its own and a
    pathology's report label is the strongest of its mentions, the labeling convention
    itself (the student was taught the same rules on single sentences, span_teacher.py,
    and a short input leaves a rare cue nothing to compete with); No Finding, a statement
    about the whole report, comes from the report-level head. Two exact savings: a
    sentence repeated across the batch (Open-i's boilerplate) is encoded once, and the
    report pass runs only for reports whose No Finding the conventions do not already
    blank (no pathology positive or uncertain); ``cache`` extends the first across calls
    and to repeated reports. Gradient mode is the caller's."""
    from ctray.models.windows import encode_reports
    from ctray.tasks.cxr.span_teacher import reading_sentences

    texts = list(texts)
    if net.meta.aggregation != "sentences" or not texts:
        logits, windows = report_logits(net, tokenizer, texts, device, batch_size)
        return _argmax(logits, len(texts)), windows
    sentences: list[str] = []
    owner: list[int] = []
    for k, text in enumerate(texts):
        parts = reading_sentences(text)
        sentences += parts
        owner += [k] * len(parts)
    heads = len(net.meta.observations)

    def read(chunk: list[str]):
        return list(_argmax(report_logits(net, tokenizer, chunk, device, batch_size)[0],
                            len(chunk)))

    by_sentence = _read_once(sentences, cache, "sentence", read)
    per_sentence = (np.stack([by_sentence[s] for s in sentences]) if sentences
                    else np.zeros((0, heads), dtype=np.int64))
    classes = aggregate_mentions(per_sentence, np.asarray(owner, dtype=np.int64), len(texts))
    windows = encode_reports(tokenizer, texts, net.meta.max_length, net.meta.stride).windows()
    observations = list(net.meta.observations)
    if NO_FINDING in observations:
        nf = observations.index(NO_FINDING)
        classes[:, nf] = 0
        need = np.arange(len(texts))
        if net.meta.consistency:
            path = [j for j, o in enumerate(observations) if o in PATHOLOGIES]
            need = need[~np.isin(classes[:, path], (1, 3)).any(axis=1)]
        if len(need):
            def no_finding(chunk: list[str]):
                logits = report_logits(net, tokenizer, chunk, device, batch_size)[0][nf]
                return logits.argmax(dim=1).cpu().numpy().tolist()

            by_report = _read_once([texts[i] for i in need], cache, "report", no_finding)
            classes[need, nf] = [by_report[texts[i]] for i in need]
    return classes, windows


def _argmax(logits: Sequence, n: int) -> np.ndarray:
    if not logits:
        return np.zeros((n, 0), dtype=np.int64)
    return np.stack([lg.argmax(dim=1).cpu().numpy() for lg in logits], axis=1).astype(np.int64)


def class_values(classes: np.ndarray, observations: Sequence[str],
                 consistency: bool) -> np.ndarray:
    """Class indices [n, 14] -> CheXpert values (NaN = blank), conventions applied."""
    values = np.asarray(CLASS_VALUES, dtype=float)[classes] if classes.size else \
        np.zeros((len(classes), len(observations)))
    return apply_conventions(values, observations) if consistency else values


def apply_conventions(values: np.ndarray, observations: Sequence[str]) -> np.ndarray:
    """docs/cxr_labeling.md's structural rules: Lung Opacity = aggregate(own, positive
    child) (§5), No Finding is 1 only when no pathology is 1 or -1 (§6 (a))."""
    out = values.copy()
    col = {o: j for j, o in enumerate(observations)}
    if "Lung Opacity" in col:
        children = [col[c] for c in LUNG_OPACITY_CHILDREN if c in col]
        any_child = (out[:, children] == POSITIVE).any(axis=1) if children else False
        out[any_child, col["Lung Opacity"]] = POSITIVE
    if NO_FINDING in col:
        path = [col[p] for p in PATHOLOGIES if p in col]
        blocked = np.isin(out[:, path], (POSITIVE, UNCERTAIN)).any(axis=1)
        out[blocked, col[NO_FINDING]] = BLANK
    return out


# -- storage ---------------------------------------------------------------------------

def save_encoder_labeler(out_dir: str | Path, net, tokenizer, meta: EncoderMeta) -> Path:
    """Export the encoder + tokenizer (HF folder), the heads and the meta file."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    net = getattr(net, "module", net)  # unwrap DDP
    net.encoder.save_pretrained(out)
    tokenizer.save_pretrained(out)
    heads = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()
             if not k.startswith("encoder.")}
    save_file(heads, str(out / HEADS_FILE))
    (out / META_FILE).write_text(json.dumps(meta.to_dict(), indent=2, ensure_ascii=False),
                                 encoding="utf-8")
    return out


def is_encoder_labeler(path: str | Path) -> bool:
    return (Path(path) / META_FILE).is_file()


def load_net(local_dir: str | Path, device: str = "cpu"):
    """(net, tokenizer) from an exported folder on local disk."""
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    local = Path(local_dir)
    if not is_encoder_labeler(local):
        raise FileNotFoundError(f"{local} has no {META_FILE}: not a train-cxr-encoder export")
    meta = EncoderMeta.from_dict(json.loads((local / META_FILE).read_text(encoding="utf-8")))
    encoder = AutoModel.from_pretrained(local, add_pooling_layer=False) \
        if _is_bert(local) else AutoModel.from_pretrained(local)
    net = build_net(encoder, meta)
    state = load_file(str(local / HEADS_FILE))
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("encoder.")]
    if missing or unexpected:
        raise ValueError(f"{local}/{HEADS_FILE}: missing {missing}, unexpected {unexpected}")
    return net.to(device).eval(), AutoTokenizer.from_pretrained(local)


def _is_bert(local: Path) -> bool:
    try:
        config = json.loads((local / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return config.get("model_type") == "bert"


def inference_dtype(requested: str, device: str) -> str:
    """The dtype a labeler computes in. ``auto``: on CPU ctray's one rule
    (``ctray.hardware.cpu_dtype``: bfloat16 only where the CPU computes it natively), on
    CUDA bfloat16 where the GPU supports it; ``float32`` / ``bfloat16`` as written.
    Measured on the faster CPU kind: bf16 autocast read 480 Open-i reports 1.7x faster
    than float32 with the same labels on all 480 (benchmarks/cxr_encoder.py --bf16).
    Labels can differ where two classes are within bf16's rounding, so runs that compare
    labels exactly across batch compositions pin float32."""
    from ctray.hardware import DTYPE_ALIASES, cpu_dtype

    requested = DTYPE_ALIASES.get(requested, requested)
    if requested != "auto":
        return requested
    if str(device).startswith("cuda"):
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return cpu_dtype("auto").dtype


class CXREncoderLabeler:
    """Labels CXR reports with the 14 CheXpert observations from an exported folder.

    >>> labeler = CXREncoderLabeler.load("runs/train_cxr_encoder/model")
    >>> labeler.label(["Small right pleural effusion. No pneumothorax."])[0]["Pleural Effusion"]
    1.0
    """

    def __init__(self, net, tokenizer, device: str = "cpu", batch_size: int = 32,
                 cache_entries: int = 100_000, dtype: str = "auto"):
        self.net = net.eval()
        self.tokenizer = tokenizer
        self.device = device
        self.batch_size = batch_size
        # Weights stay float32; bfloat16 is autocast compute (inference_dtype).
        self.dtype = inference_dtype(dtype, device)
        # Sentences and reports already read (ReadingCache); 0 turns it off.
        self.cache = ReadingCache(cache_entries) if cache_entries else None
        # Windows per report in the last call (>1: the report was longer than max_length).
        self.last_windows = np.zeros(0, dtype=np.int64)

    @classmethod
    def load(cls, path_or_uri: str, device: str | None = None, batch_size: int = 32,
             cache_dir: str | None = None, cache_entries: int = 100_000,
             dtype: str = "auto") -> "CXREncoderLabeler":
        """An exported folder, local or ``s3://`` / ``gs://`` (copied to a local cache)."""
        from ctray.io.storage import local_model_dir

        local = local_model_dir(path_or_uri, cache_dir)
        if device is None:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        net, tokenizer = load_net(local, device)
        return cls(net, tokenizer, device, batch_size, cache_entries, dtype)

    @property
    def meta(self) -> EncoderMeta:
        return self.net.meta

    @property
    def observations(self) -> list[str]:
        return list(self.net.meta.observations)

    def predict_values(self, texts: Sequence[str]) -> np.ndarray:
        """[n_reports, 14] CheXpert values (1.0 / 0.0 / -1.0, NaN = blank)."""
        import torch

        texts = list(texts)
        if not texts:
            return np.zeros((0, len(self.observations)))
        autocast = (torch.autocast("cuda" if str(self.device).startswith("cuda") else "cpu",
                                   dtype=getattr(torch, self.dtype))
                    if self.dtype != "float32" else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            classes, self.last_windows = predict_classes(self.net, self.tokenizer, texts,
                                                         self.device, self.batch_size,
                                                         self.cache)
        return class_values(classes, self.observations, self.meta.consistency)

    def label(self, texts: list[str]) -> list[dict[str, float]]:
        """One ``{observation: 1.0 / 0.0 / -1.0 / NaN}`` per report, in the 14 CheXpert
        columns' order (NaN = blank, written empty by label-cxr)."""
        values = self.predict_values(texts)
        return [{o: float(v) for o, v in zip(self.observations, row)} for row in values]
