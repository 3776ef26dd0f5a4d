"""The JSON object in a model answer: one extraction for every task that asks an LLM for JSON.

Models wrap JSON in prose ("Sure: ...") or in a ```json fence, and small models add
text after it. ``extract_json_object`` finds the object in all these shapes; with
``single=True`` it refuses answers that are ambiguous (several fences or several
objects), for tasks that must not guess which object the model meant. Errors are
:class:`JSONAnswerError` with a short message that never quotes the answer (it may
echo report text); tasks turn it into their own row error or repair prompt.
"""

from __future__ import annotations

import json
import re
from typing import Any

# A fenced block, with or without a language tag (```json, ```JSON, ```).
FENCE = re.compile(r"```[a-zA-Z]*\s*(.*?)```", re.S)


class JSONAnswerError(ValueError):
    """The answer holds no usable JSON object; the message says why, not what."""


def extract_json_object(text: Any, single: bool = False) -> dict[str, Any]:
    """The first JSON object of ``text`` (bare, after a preamble, or in a code fence).

    Text after the object is ignored unless ``single``: then a second fence or a second
    object is an error, as is a fence that is not the only one."""
    return _extract(text, "{", "object", single)


def extract_json_array(text: Any, single: bool = False) -> list[Any]:
    """The first JSON array of ``text``, found like :func:`extract_json_object`."""
    return _extract(text, "[", "list", single)


def _extract(text: Any, opener: str, what: str, single: bool) -> Any:
    body = text.strip() if isinstance(text, str) else ""
    if not body:
        raise JSONAnswerError("the answer is empty")
    fenced = FENCE.findall(body)
    if single and len(fenced) > 1:
        raise JSONAnswerError("the answer has several code blocks")
    if fenced:
        body = fenced[0].strip()
    start = body.find(opener)
    if start < 0:
        raise JSONAnswerError(f"the answer contains no JSON {what}")
    try:
        value, end = json.JSONDecoder().raw_decode(body, start)
    except json.JSONDecodeError as exc:
        raise JSONAnswerError(f"the answer is not valid JSON ({exc.msg} at char {exc.pos})") from None
    if single and opener in body[end:]:
        raise JSONAnswerError(f"the answer contains more than one JSON {what}")
    return value


def schema_problems(value: Any, schema: dict[str, Any], limit: int = 5) -> list[str]:
    """Up to ``limit`` JSON-schema violations of ``value``, each located ("at a/0/b")."""
    import jsonschema

    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(value),
                    key=lambda e: list(e.absolute_path))
    problems = []
    for e in errors[:limit]:
        where = "/".join(str(p) for p in e.absolute_path) or "top level"
        # The message quotes the offending value: cap it so report text stays short.
        problems.append(f"schema: at {where}: {e.message[:160]}")
    return problems
