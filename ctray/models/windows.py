"""Long reports through a fixed-window encoder: token windows with overlap, padding, and
max-pooling the windows' logits back to one row per report (the findings classifier and
the CXR encoder labeler share it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


DEFAULT_MAX_LENGTH = 512


DEFAULT_STRIDE = 128


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids a tokenizer puts before and after a single text ([CLS] / [SEP] for BERT,
    <s> / </s> for RoBERTa). Read from the tokenizer's own output because fast
    tokenizers in transformers 5 have no ``build_inputs_with_special_tokens``."""
    cached = getattr(tokenizer, "_ctray_specials", None)
    if cached is not None:
        return cached
    probe = "a"
    body = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for k in range(len(full) - len(body) + 1):
        if full[k:k + len(body)] == body:
            found = (list(full[:k]), list(full[k + len(body):]))
            break
    else:  # pragma: no cover - a tokenizer whose specials change the text's own tokens
        raise ValueError(f"cannot tell the special tokens of {type(tokenizer).__name__}")
    try:
        tokenizer._ctray_specials = found
    except AttributeError:  # pragma: no cover - tokenizers that refuse new attributes
        pass
    return found


def window_token_ids(ids: Sequence[int], tokenizer, max_length: int, stride: int) -> list[list[int]]:
    """Overlapping windows of ``ids`` (no special tokens), each wrapped as the model
    expects ([CLS] ... [SEP] for BERT). Consecutive windows share ``stride`` tokens
    so a sentence cut at a window edge is seen whole in the next one."""
    prefix, suffix = special_tokens(tokenizer)
    body = max_length - len(prefix) - len(suffix)
    if body <= 0:
        raise ValueError(f"max_length {max_length} leaves no room for tokens")
    if not 0 <= stride < body:
        raise ValueError(f"stride {stride} must be in [0, {body}) for max_length {max_length}")
    ids = list(ids)
    step = body - stride
    starts = [0]
    while starts[-1] + body < len(ids):
        starts.append(starts[-1] + step)
    return [prefix + ids[s:s + body] + suffix for s in starts]


@dataclass
class EncodedReports:
    chunks: list[list[int]]  # token ids per window
    owner: list[int]  # report index of each window
    n_reports: int

    def windows(self) -> np.ndarray:
        """Number of windows per report."""
        return np.bincount(np.asarray(self.owner, dtype=np.int64), minlength=self.n_reports)

    @property
    def n_chunked(self) -> int:
        """Reports that needed more than one window."""
        return int(np.sum(self.windows() > 1))


def encode_reports(tokenizer, texts: Sequence[str], max_length: int = DEFAULT_MAX_LENGTH,
                   stride: int = DEFAULT_STRIDE) -> EncodedReports:
    chunks: list[list[int]] = []
    owner: list[int] = []
    for i, text in enumerate(texts):
        ids = tokenizer(text or "", add_special_tokens=False, truncation=False)["input_ids"]
        for window in window_token_ids(ids, tokenizer, max_length, stride):
            chunks.append(window)
            owner.append(i)
    return EncodedReports(chunks, owner, len(texts))


def pad_chunks(chunks: Sequence[Sequence[int]], pad_id: int):
    """(input_ids, attention_mask) tensors padded to the longest window."""
    import torch

    width = max(len(c) for c in chunks)
    ids = torch.full((len(chunks), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(chunks), width), dtype=torch.long)
    for i, c in enumerate(chunks):
        ids[i, :len(c)] = torch.as_tensor(c, dtype=torch.long)
        mask[i, :len(c)] = 1
    return ids, mask


def max_pool(logits, owner, n_reports: int):
    """Per-report maximum of window logits (differentiable, used in training too)."""
    import torch

    index = owner.view(-1, 1).expand(-1, logits.shape[1])
    out = torch.full((n_reports, logits.shape[1]), float("-inf"), dtype=logits.dtype,
                     device=logits.device)
    return out.scatter_reduce(0, index, logits, reduce="amax", include_self=True)
