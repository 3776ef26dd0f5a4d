"""Basic text statistics of reports, as in CT-RATE-JPN Table 1.

Per report: characters, words, sentences and unique words; tables give
"mean (SD)" per text column and group (e.g. Training (MT) / Validation (Refined)).

Counting conventions (the paper names MeCab for Japanese words but not the details):

* characters: every character of the text after stripping leading/trailing
  whitespace (Japanese reports contain essentially no inner whitespace);
* words: Japanese = MeCab (unidic-lite) tokens *including* punctuation tokens.
  On MT-style Japanese findings this gives ~1.55 characters per word, matching the
  paper's 467.0 characters / 303.3 words, while dropping punctuation gives ~1.74.
  English = regex words without punctuation;
* sentences: ``split_sentences``; unique words: distinct word types
  (case-folded for English).

The SD is the sample standard deviation (ddof=1, pandas' default).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from ctray.text.sentences import detect_lang, split_sentences
from ctray.text.tokenize import words as _words

STAT_COLUMNS = ("characters", "words", "sentences", "unique_words")
STAT_LABELS = {"characters": "Characters", "words": "Words", "sentences": "Sentences",
               "unique_words": "Unique Words"}


def text_stats(text: str, lang: str = "auto") -> dict[str, int]:
    """Characters, words, sentences and unique words of one text."""
    if not isinstance(text, str):
        text = ""
    text = text.strip()
    if lang == "auto":
        lang = detect_lang(text)
    toks = _words(text, lang, keep_punct=True)
    if lang == "en":
        types = {t.casefold() for t in toks}
    else:
        types = set(toks)
    return {
        "characters": len(text),
        "words": len(toks),
        "sentences": len(split_sentences(text, lang)),
        "unique_words": len(types),
    }


def stats_frame(texts: pd.Series, lang: str = "auto") -> pd.DataFrame:
    """Per-text statistics (one row per non-missing text, index kept)."""
    texts = texts.dropna()
    rows = [text_stats(t, lang) for t in texts]
    return pd.DataFrame(rows, index=texts.index, columns=list(STAT_COLUMNS))


def _mean_sd(values: pd.Series, decimals: int) -> str:
    sd = values.std(ddof=1)
    sd_txt = "nan" if pd.isna(sd) else f"{sd:.{decimals}f}"
    return f"{values.mean():.{decimals}f} ({sd_txt})"


def stats_table(df: pd.DataFrame, text_columns: Sequence[str],
                group_column: str | None = None, lang: str = "auto",
                decimals: int = 1) -> pd.DataFrame:
    """Table 1 layout: one row per (section, group) with N and "mean (SD)" per statistic.

    Missing texts are left out of N and of the means.
    """
    groups = [(None, df)] if group_column is None else list(df.groupby(group_column, sort=False))
    rows = []
    for col in text_columns:
        for key, part in groups:
            frame = stats_frame(part[col], lang)
            row: dict[str, object] = {"section": col}
            if group_column is not None:
                row[group_column] = key
            row["N"] = len(frame)
            for stat in STAT_COLUMNS:
                row[STAT_LABELS[stat]] = (_mean_sd(frame[stat], decimals) if len(frame)
                                          else "")
            rows.append(row)
    return pd.DataFrame(rows)
