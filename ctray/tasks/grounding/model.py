"""Text-prompted 3D segmentation: a MONAI BasicUNet whose features are FiLM-conditioned
on a sentence embedding, plus the sentence encoder and the training loss.

``TextFiLMUNet.forward(image, text_embedding)`` takes the embedding as a second
argument so it can be the ``predictor`` of ``sliding_window_inference``, which
forwards extra keyword arguments unchanged to every window batch::

    sliding_window_inference(image, roi, 4, model, text_embedding=emb)

Embedding shapes:

* ``(E,)`` or ``(1, E)``: one prompt for every window/image → ``(N, 1, ...)``.
* ``(N, E)``: one prompt per image of a training batch → ``(N, 1, ...)``.
* ``(1, T, E)``: T prompts for every window → ``(N, T, ...)``; the encoder runs
  once per window and only the decoder runs per prompt, so all findings of one
  scan cost about one encoder pass.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import torch
from monai.losses import DiceCELoss
from monai.networks.nets import BasicUNet
from torch import nn


class FiLM(nn.Module):
    """Per-channel ``x * (1 + gamma(e)) + beta(e)``.

    Zero-initialised, so an untrained text branch leaves the U-Net unchanged and
    training starts from a plain segmentation network.
    """

    def __init__(self, text_dim: int, channels: int):
        super().__init__()
        self.proj = nn.Linear(text_dim, 2 * channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.proj(emb).chunk(2, dim=-1)
        shape = (*gamma.shape, *([1] * (x.ndim - 2)))
        return x * (1.0 + gamma.view(shape)) + beta.view(shape)


class TextFiLMUNet(BasicUNet):
    """MONAI ``BasicUNet`` (3D, one logit channel per prompt) with FiLM on the
    bottleneck and on every decoder stage."""

    def __init__(self, text_dim: int, in_channels: int = 1,
                 features: Sequence[int] = (16, 16, 32, 64, 128, 16), **kwargs):
        super().__init__(spatial_dims=3, in_channels=in_channels, out_channels=1,
                         features=features, **kwargs)
        f = tuple(features)
        self.text_dim = text_dim
        # Bottleneck, then decoder outputs u4, u3, u2, u1.
        self.films = nn.ModuleList([FiLM(text_dim, c) for c in (f[4], f[3], f[2], f[1], f[5])])

    def _embedding(self, text_embedding: torch.Tensor, n: int) -> tuple[torch.Tensor, int]:
        """→ ``(n * T, E)`` aligned with the image batch repeated T times, and T."""
        e = torch.as_tensor(text_embedding)
        if e.ndim == 1:
            e = e[None]
        if e.ndim == 2:
            if e.shape[0] not in (1, n):
                raise ValueError(f"text_embedding batch {e.shape[0]} does not match "
                                 f"image batch {n} (use shape (1, T, E) for T prompts)")
            return e.expand(n, -1), 1
        if e.ndim == 3 and e.shape[0] in (1, n):
            t = e.shape[1]
            # Image-major order: rows [img0·p0, img0·p1, ..., img1·p0, ...].
            return e.expand(n, -1, -1).reshape(n * t, e.shape[-1]), t
        raise ValueError(f"text_embedding must be (E,), (N, E) or (1|N, T, E), "
                         f"got {tuple(e.shape)}")

    def forward(self, x: torch.Tensor, text_embedding: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        emb, t = self._embedding(text_embedding.to(device=x.device, dtype=x.dtype), n)

        def rep(z: torch.Tensor) -> torch.Tensor:
            return z if t == 1 else z.repeat_interleave(t, dim=0)

        x0 = self.conv_0(x)
        x1 = self.down_1(x0)
        x2 = self.down_2(x1)
        x3 = self.down_3(x2)
        x4 = self.films[0](rep(self.down_4(x3)), emb)
        u4 = self.films[1](self.upcat_4(x4, rep(x3)), emb)
        u3 = self.films[2](self.upcat_3(u4, rep(x2)), emb)
        u2 = self.films[3](self.upcat_2(u3, rep(x1)), emb)
        u1 = self.films[4](self.upcat_1(u2, rep(x0)), emb)
        logits = self.final_conv(u1)  # (n * t, 1, ...)
        return logits.reshape(n, t, *logits.shape[2:])


def grounding_loss() -> DiceCELoss:
    """Dice + BCE on sigmoid logits (one channel per prompt)."""
    return DiceCELoss(sigmoid=True)


class TextEncoder:
    """Sentence embeddings from any Hugging Face encoder (hub id or local folder):
    masked mean pooling of the last hidden state, cached per text.

    The cache matters because a scan's finding sentences are re-encoded at every
    epoch and for every sliding-window call otherwise.
    """

    def __init__(self, model_name_or_path: str | Path, device: str | torch.device = "cpu",
                 max_length: int = 128, normalize: bool = False):
        from transformers import AutoModel, AutoTokenizer

        from ctray.models.encoders import resolve_encoder_source

        # Packaged short names (all-minilm-l6-v2), hub ids, folders, s3:// folders.
        source = resolve_encoder_source(str(model_name_or_path))
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        self.model = AutoModel.from_pretrained(source).to(device).eval()
        self.device = torch.device(device)
        self.max_length = max_length
        self.normalize = normalize
        self._cache: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def cache_size(self) -> int:
        return len(self._cache)

    @torch.inference_mode()
    def _encode(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(texts, padding=True, truncation=True,
                               max_length=self.max_length, return_tensors="pt").to(self.device)
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        if self.normalize:
            pooled = nn.functional.normalize(pooled, dim=-1)
        return pooled.float().cpu()

    def encode(self, texts: str | Sequence[str]) -> torch.Tensor:
        """``(len(texts), dim)`` float32 CPU tensor (``(dim,)`` for one string)."""
        single = isinstance(texts, str)
        items = [texts] if single else list(texts)
        with self._lock:
            missing = list(dict.fromkeys(t for t in items if t not in self._cache))
            if missing:
                for text, vec in zip(missing, self._encode(missing)):
                    self._cache[text] = vec
            out = torch.stack([self._cache[t] for t in items]) if items else torch.empty(0, self.dim)
        return out[0] if single else out


def save_tiny_text_encoder(out_dir: str | Path, texts: Sequence[str], hidden_size: int = 32,
                           seed: int = 0) -> str:
    """A randomly initialised 2-layer BERT and a word-level tokenizer over ``texts``,
    saved where ``TextEncoder`` can load it: an offline stand-in for CI and examples
    (the embeddings are random but deterministic and distinct per sentence)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    norm = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    split = pre_tokenizers.BertPreTokenizer()
    words = sorted({w for t in texts for w, _ in split.pre_tokenize_str(norm.normalize_str(t))})
    vocab = {tok: i for i, tok in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = norm, split
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", model_max_length=128)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden_size, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=2 * hidden_size,
                        max_position_embeddings=128, pad_token_id=vocab["[PAD]"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    BertModel(config).save_pretrained(out)
    fast.save_pretrained(out)
    return str(out)
