"""Reading the translation out of a model answer that ends with a marker line.

The prompt asks for "<marker> <translation>" as the last part of the answer
(CT-RATE-JPN's 「和訳:」 convention). Real answers vary: full-width colons,
markdown bold around the marker, the marker echoed while the model restates the
instructions, code fences, reasoning blocks, notes after the translation, the
literal "\\n" copied from a prompt. The rule: take the text after the *last*
marker that starts a line and has content after it; clean the wrappers; refuse
(``TranslationParseError``) when nothing usable is left, so the row becomes an
error with its raw answer kept, never a silently wrong translation.
"""

from __future__ import annotations

import re

from ctray.text.sentences import detect_lang


class TranslationParseError(ValueError):
    pass


_THINK = re.compile(r"<think>.*?(</think>|$)", re.S | re.I)
_FENCE_LINE = re.compile(r"^\s*```[\w-]*\s*$", re.M)
# Notes a model appends after the translation ("注:", "※", "Note:", "(Note ...").
_NOTE_START = re.compile(
    r"^\s*(?:[（(]?\s*)?(?:注|注記|備考|補足|説明|※|\*\s*注|Note|Notes|Translator'?s note)\s*[:：)）]?",
    re.I)
_QUOTES = {"「": "」", "『": "』", '"': '"', "“": "”"}


def _marker_pattern(markers: list[str]) -> re.Pattern:
    names = "|".join(re.escape(m.rstrip(":：").strip()) for m in markers)
    # The marker may be decorated: **和訳:**, ### 和訳, 「和訳:」, - 和訳：, 【和訳】.
    return re.compile(
        rf"^[ \t>*#\-・]*[「『【\[]?(?:\*\*|__)?(?:{names})(?:\*\*|__)?[」』】\]]?"
        rf"(?:\*\*|__)?[ \t]*[:：]?(?:\*\*|__)?[」』】\]]?[ \t]*",
        re.M)


def _strip_wrappers(text: str) -> str:
    text = text.strip()
    if text.startswith("\\n"):  # the prompt's literal "\n" copied into the answer
        text = text[2:]
    text = _FENCE_LINE.sub("", text).strip()
    # Stop at notes the model adds after the translation.
    kept: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        if kept and _NOTE_START.match(para):
            break
        kept.append(para)
    text = "\n\n".join(kept).strip()
    if len(text) >= 2 and text[0] in _QUOTES and text.endswith(_QUOTES[text[0]]) \
            and text.count(text[0]) == 1:
        text = text[1:-1].strip()
    return text


def extract_translation(raw: str, markers: list[str] | str = "和訳:",
                        target_lang: str | None = "ja") -> str:
    """The translation in ``raw``; raises TranslationParseError with the reason."""
    if isinstance(markers, str):
        markers = [markers]
    if not isinstance(raw, str) or not raw.strip():
        raise TranslationParseError("empty model answer")
    text = _THINK.sub("", raw).replace("\r\n", "\n")
    pattern = _marker_pattern(markers)
    found = list(pattern.finditer(text))
    if not found:
        raise TranslationParseError(f"marker {markers[0]!r} not found in the answer")
    candidate = ""
    # Last marker with content wins: earlier ones are usually the model restating
    # the instructions; a marker with nothing after it is a truncated answer.
    ends = [m.start() for m in found[1:]] + [len(text)]
    for m, end in reversed(list(zip(found, ends))):
        candidate = _strip_wrappers(text[m.end():end])
        if candidate:
            break
    if not candidate:
        raise TranslationParseError(f"nothing after the marker {markers[0]!r}")
    if target_lang in ("ja", "en") and detect_lang(candidate) != target_lang:
        # An untranslated echo of the source is the typical small-model failure.
        raise TranslationParseError(f"the text after the marker is not in {target_lang!r}")
    return candidate
