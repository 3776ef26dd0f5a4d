"""Sentence splitting for English and Japanese radiology reports, and language detection.

English reports (CT-RATE) contain abbreviations ("approx.", "e.g.", "Fig. 2"),
decimals ("1.5 cm") and sometimes a missing space after a full stop
("lower end.No pathological LAP"); Japanese reports end sentences with 。！？
and line breaks. Delimiters stay attached to their sentence.
"""

from __future__ import annotations

import re

# Lower-cased tokens that end with "." without ending a sentence.
# "ca." (carcinoma), "etc." and "min." usually end CT-RATE sentences, so they are not here.
_ABBREVIATIONS = frozenset({
    "approx", "e.g", "i.e", "eg", "ie", "fig", "figs", "vs", "cf", "dr", "prof", "mr", "mrs",
    "al", "resp", "incl", "diam",
})
# "No." is an abbreviation only before a number ("No. 5"); otherwise it is a word.
_NUMBER_ABBREVIATIONS = frozenset({"no", "nos", "fig", "figs", "ser", "img", "vol", "ref"})

_JA_CHARS = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uff66-\uff9f]")
_LETTERS = re.compile(r"[A-Za-z\u00c0-\u024f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uff66-\uff9f]")

# Candidate boundary: terminal punctuation (+ closing quotes/brackets) then whitespace,
# or "." glued to a capitalised word ("end.No").
_EN_BOUNDARY = re.compile(r"[.!?]+[\"')\]]*(?=\s)|(?<=[a-z]{2})\.(?=[A-Z][a-z])")
_BULLET = re.compile(r"\s*[·•]\s*")
# The full-width period "．" (used in some technical Japanese) ends a sentence unless a digit
# follows ("1．5cm").
_JA_BOUNDARY = re.compile(r"(?:[。！？!?]|．(?![0-9０-９]))+[」』）)\]】]*|\n+")


def detect_lang(text: str, threshold: float = 0.2) -> str:
    """"ja" when kana/kanji make up at least ``threshold`` of the letters, else "en"."""
    letters = _LETTERS.findall(text or "")
    if not letters:
        return "en"
    ja = sum(1 for ch in letters if _JA_CHARS.match(ch))
    return "ja" if ja / len(letters) >= threshold else "en"


def _is_abbreviation(text: str, dot: int) -> bool:
    """True when the '.' at ``dot`` closes an abbreviation rather than a sentence."""
    start = dot
    while start > 0 and not text[start - 1].isspace() and text[start - 1] not in "(;:,":
        start -= 1
    token = text[start:dot].lower().strip("\"'([")
    following = text[dot + 1:].lstrip()
    if token in _NUMBER_ABBREVIATIONS:
        return bool(following[:1].isdigit())
    if token in _ABBREVIATIONS:
        return True
    # Single letters ("A. Smith", list markers "a.") and dotted initials ("U.S.").
    if re.fullmatch(r"[a-z]|(?:[a-z]\.)+[a-z]", token):
        return True
    return False


def _split_en(text: str) -> list[str]:
    out: list[str] = []
    for block in text.split("\n"):
        for part in _BULLET.split(block):
            start = 0
            for m in _EN_BOUNDARY.finditer(part):
                dot = m.start()
                if part[dot] == "." and m.end() - dot == 1 and _is_abbreviation(part, dot):
                    continue
                piece = part[start:m.end()].strip()
                if piece:
                    out.append(piece)
                start = m.end()
            tail = part[start:].strip()
            if tail:
                out.append(tail)
    return out


def _split_ja(text: str) -> list[str]:
    out: list[str] = []
    start = 0
    for m in _JA_BOUNDARY.finditer(text):
        piece = text[start:m.end()].strip()
        if piece:
            out.append(piece)
        start = m.end()
    tail = text[start:].strip()
    if tail:
        out.append(tail)
    return out


def split_sentences(text: str, lang: str = "auto") -> list[str]:
    """Split ``text`` into sentences; ``lang`` is "en", "ja" or "auto" (detect_lang)."""
    if not isinstance(text, str) or not text.strip():
        return []
    if lang == "auto":
        lang = detect_lang(text)
    if lang == "ja":
        return _split_ja(text)
    if lang == "en":
        return _split_en(text)
    raise ValueError(f"unsupported language {lang!r}; use 'en', 'ja' or 'auto'")
