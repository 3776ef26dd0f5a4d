"""Tiny BERT models and tokenizers built locally (no hub downloads in tests).

The Japanese tokenizer is the same class and configuration as tohoku-nlp's
bert-base-japanese-v3 (MeCab word splitting with unidic-lite, then WordPiece); only
its vocabulary is small and built here from the bundled Japanese sample corpus.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO / "ctray" / "data"
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
JA_SECTIONS = {"findings": "Findings_JA", "impressions": "Impressions_JA"}
EN_SECTIONS = {"findings": "Findings_EN", "impressions": "Impressions_EN"}


def sample_texts(lang: str = "ja") -> list[str]:
    sections = JA_SECTIONS if lang == "ja" else EN_SECTIONS
    df = pd.read_csv(SAMPLE_DIR / f"sample_reports_{lang}.csv")
    return [("\n\n".join(str(df.at[i, c]).strip() for c in sections.values()
                         if isinstance(df.at[i, c], str) and df.at[i, c].strip()))
            for i in df.index]


def _write_vocab(path: Path, words: Counter, min_freq: int) -> Path:
    chars = sorted({ch for w in words for ch in w})
    vocab = list(SPECIALS)
    vocab += sorted(w for w, n in words.items() if n >= min_freq and len(w) > 1)
    # Every character, word-initial and continuation, so WordPiece never needs [UNK]
    # for text drawn from the same alphabet.
    vocab += chars + [f"##{c}" for c in chars]
    seen, unique = set(), []
    for tok in vocab:
        if tok not in seen:
            seen.add(tok)
            unique.append(tok)
    path.write_text("\n".join(unique) + "\n", encoding="utf-8")
    return path


def build_ja_tokenizer(out_dir: str | Path, texts: list[str] | None = None, min_freq: int = 2):
    """A tohoku-style BertJapaneseTokenizer (MeCab + WordPiece) saved to ``out_dir``."""
    from transformers import BertJapaneseTokenizer
    from transformers.models.bert_japanese.tokenization_bert_japanese import MecabTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mecab = MecabTokenizer(do_lower_case=False, mecab_dic="unidic_lite")
    words = Counter(w for t in (texts or sample_texts("ja")) for w in mecab.tokenize(t))
    vocab = _write_vocab(out / "vocab.txt", words, min_freq)
    tok = BertJapaneseTokenizer(str(vocab), do_lower_case=False, word_tokenizer_type="mecab",
                                subword_tokenizer_type="wordpiece",
                                mecab_kwargs={"mecab_dic": "unidic_lite"},
                                model_max_length=512)
    tok.save_pretrained(out)
    return tok


def build_en_tokenizer(out_dir: str | Path, texts: list[str] | None = None, min_freq: int = 2):
    """An uncased WordPiece BertTokenizer over the English sample corpus."""
    from tokenizers import normalizers, pre_tokenizers
    from transformers import BertTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # The same normalisation and pre-splitting the BERT tokenizer applies itself.
    norm, split = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words = Counter(w for t in (texts or sample_texts("en"))
                    for w, _ in split.pre_tokenize_str(norm.normalize_str(t)))
    vocab = _write_vocab(out / "vocab.txt", words, min_freq)
    tok = BertTokenizer(str(vocab), do_lower_case=True, model_max_length=512)
    tok.save_pretrained(out)
    return tok


def build_tiny_bert(out_dir: str | Path, tokenizer, hidden: int = 64, layers: int = 2,
                    heads: int = 2, max_position: int = 512, seed: int = 0,
                    dropout: float = 0.1, init_range: float = 0.02,
                    zero_positions: bool = False) -> str:
    """A randomly initialised BertForSequenceClassification (18 labels) + its tokenizer.

    For a model that must learn from ~200 reports in seconds: a wide initialisation
    (``init_range`` 0.2) and zeroed position/segment embeddings start it close to a
    bag of words, which it then refines; BERT's defaults (0.02, random positions)
    need thousands of steps before the [CLS] vector carries any signal."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=hidden * 4,
                        max_position_embeddings=max_position, num_labels=18,
                        problem_type="multi_label_classification",
                        pad_token_id=tokenizer.pad_token_id, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout, initializer_range=init_range)
    model = BertForSequenceClassification(config)
    if zero_positions:
        emb = model.bert.embeddings
        torch.nn.init.zeros_(emb.position_embeddings.weight)
        torch.nn.init.zeros_(emb.token_type_embeddings.weight)
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)
