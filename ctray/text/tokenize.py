"""Word segmentation: MeCab (unidic-lite) for Japanese, a regex for English.

The CT-RATE-JPN paper counts Japanese words with MeCab because Japanese has no
spaces. The tagger is built once per process (Ray workers each build their own;
a MeCab.Tagger is not picklable).
"""

from __future__ import annotations

import functools
import re
import unicodedata

from ctray.text.sentences import detect_lang

# Words keep inner hyphens/apostrophes/decimal points: "ground-glass", "1.5", "patient's".
_EN_WORD = re.compile(r"[^\W_]+(?:[-'.,][^\W_]+)*")


@functools.lru_cache(maxsize=1)
def _tagger():
    import MeCab  # imported lazily: English-only callers need no MeCab

    try:
        import unidic_lite

        return MeCab.Tagger(f"-d {unidic_lite.DICDIR} -Owakati")
    except (ImportError, RuntimeError):
        # mecab-python3 falls back to unidic-lite itself when it is installed;
        # this keeps a system-wide mecabrc working where it is not.
        return MeCab.Tagger("-Owakati")


def mecab_words(text: str) -> list[str]:
    """MeCab tokens of ``text`` (punctuation tokens included, whitespace dropped)."""
    if not text:
        return []
    return _tagger().parse(text).split()


def is_punctuation(token: str) -> bool:
    """True for tokens made only of punctuation/symbols (。、「」.,:;- etc.)."""
    return bool(token) and all(unicodedata.category(ch)[0] in "PSZ" for ch in token)


def en_words(text: str) -> list[str]:
    """English word tokens; a trailing thousands/decimal separator is not kept."""
    return [w.rstrip(".,") for w in _EN_WORD.findall(text or "")]


def words(text: str, lang: str = "auto", keep_punct: bool = True) -> list[str]:
    """Words of ``text``: MeCab tokens for Japanese, regex words for English.

    Japanese punctuation tokens (。、) are kept by default because that is how the
    CT-RATE-JPN word counts behave (see ``ctray.text.stats``); ``keep_punct=False``
    drops them. English words never include punctuation.
    """
    if not isinstance(text, str) or not text:
        return []
    if lang == "auto":
        lang = detect_lang(text)
    if lang == "ja":
        toks = mecab_words(text)
        return toks if keep_punct else [t for t in toks if not is_punctuation(t)]
    if lang == "en":
        return en_words(text)
    raise ValueError(f"unsupported language {lang!r}; use 'en', 'ja' or 'auto'")
