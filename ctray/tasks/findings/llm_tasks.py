"""LLM labeler for the 18 CT-RATE findings: one JSON object of 0/1 values per report.

The request carries a JSON schema (18 required integer keys, each 0 or 1, nothing
else), which the vLLM and OpenAI backends enforce while decoding. Backends that
cannot (local transformers, the fake backend) get the same instruction in the
prompt and their answer is validated strictly: missing keys, extra keys, values
other than 0/1, non-JSON, a code fence or prose around the object are errors. An
unusable answer gets one repair request naming the problem; a second failure
is a row error that keeps the raw answer. ``lenient=True`` accepts one object
inside a code fence or prose, for models that always add them (it saves the repair
call, at the cost of accepting answers that ignored the format instruction).
"""

from __future__ import annotations

import json
import re
from typing import Any

from ctray.llm.prompts import PromptTemplate
from ctray.llm.label_task import ReportLabelTask, label_problems
from ctray.tasks.findings.schema import FINDING_COLUMNS, FINDING_NAMES, FINDINGS
from ctray.text.json_extract import JSONAnswerError, extract_json_object

KEYS: tuple[str, ...] = FINDING_NAMES  # JSON keys: the CT-RATE display names
_KEY_LIST = "\n".join(f"- {name}" for name in KEYS)
_KEY_LIST_JA = "\n".join(f"- {f.name}（{f.ja}）" for f in FINDINGS)


def label_schema() -> dict[str, Any]:
    """JSON schema of a valid answer (strict: every key required, no other key)."""
    return {
        "type": "object",
        "properties": {k: {"type": "integer", "enum": [0, 1]} for k in KEYS},
        "required": list(KEYS),
        "additionalProperties": False,
    }


PROMPT_EN = PromptTemplate(
    name="findings-json-en",
    system=(
        "You read chest CT reports and record which abnormalities the report states are "
        "present. You answer with a single JSON object and nothing else."
    ),
    user=(
        "For each finding below, write 1 if the report says it is present in this examination "
        "and 0 if the report says it is absent, does not mention it, or only mentions it as a "
        "possibility to exclude. Sizes described as normal or below pathological thresholds "
        "count as absent.\n\n"
        "Findings (use exactly these keys):\n" + _KEY_LIST + "\n\n"
        "Report:\n\"\"\"\n{report}\n\"\"\"\n\n"
        "Answer with one JSON object that has exactly these 18 keys and the value 0 or 1 for "
        "each. Do not use a code block and do not add any text before or after the object."
    ),
)

PROMPT_JA = PromptTemplate(
    name="findings-json-ja",
    system=(
        "あなたは胸部CT読影レポートから所見の有無を読み取る放射線科医です。"
        "回答は1つのJSONオブジェクトのみで、それ以外は出力しません。"
    ),
    user=(
        "以下の日本語の胸部CTレポートについて、各所見が今回の検査で「ある」と記載されていれば1、"
        "「ない」と記載されている・記載がない・除外目的で言及されているだけの場合は0としてください。"
        "正常範囲や病的サイズ未満とされたものは0です。\n\n"
        "所見（キーは括弧の前の英語名をそのまま使ってください）:\n" + _KEY_LIST_JA + "\n\n"
        "レポート:\n\"\"\"\n{report}\n\"\"\"\n\n"
        "18個の英語キーをすべて含み、値が0か1だけのJSONオブジェクトを1つだけ出力してください。"
        "コードブロックや前後の説明文は付けないでください。"
    ),
)

REPAIR = (
    "That answer could not be used: {problem}. Reply again with only one JSON object with "
    "exactly these keys: {keys}. Each value must be the number 0 or 1. No code block, no other text."
)


class LabelParseError(ValueError):
    pass


def _norm(key: str) -> str:
    return re.sub(r"[\s_\-]+", " ", key).strip().lower()


_BY_NORM = {_norm(f.name): f.column for f in FINDINGS} | {_norm(f.column): f.column for f in FINDINGS}


def _strict_json(body: str) -> Any:
    """The whole answer as JSON: what the prompt asks for (no fence, no prose)."""
    if body.startswith("```"):
        raise LabelParseError("the answer is wrapped in a code block")
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        if "{" in body:
            raise LabelParseError("the answer has text around the JSON object") from None
        raise LabelParseError(f"the answer is not valid JSON ({exc.msg})") from None


def parse_labels(text: str, lenient: bool = False) -> dict[str, int]:
    """The 18 labels (snake_case columns) from an answer, or :class:`LabelParseError`."""
    body = (text or "").strip()
    if not body:
        raise LabelParseError("the answer is empty")
    if lenient:
        try:
            obj = extract_json_object(body, single=True)
        except JSONAnswerError as exc:
            raise LabelParseError(str(exc)) from None
    else:
        obj = _strict_json(body)
    if not isinstance(obj, dict):
        raise LabelParseError(f"the answer is a JSON {type(obj).__name__}, not an object")
    labels: dict[str, int] = {}
    seen: set[str] = set()
    extra, bad = [], []
    for key, value in obj.items():
        column = _BY_NORM.get(_norm(str(key)))
        if column is None:
            extra.append(key)
            continue
        if column in seen:
            raise LabelParseError(f"finding {key!r} appears twice")
        seen.add(column)
        # bool is an int subclass in Python; JSON true/false is not the requested 0/1.
        if isinstance(value, bool) or value not in (0, 1) or not isinstance(value, int):
            bad.append(f"{key}={json.dumps(value)[:20]}")
            continue
        labels[column] = int(value)
    missing = [f.name for f in FINDINGS if f.column not in seen]
    problems = label_problems(missing, [str(k)[:40] for k in extra], bad, "0/1")
    if problems:
        raise LabelParseError(problems)
    return {c: labels[c] for c in FINDING_COLUMNS}


class FindingsLLMTask(ReportLabelTask):
    """Label one report with the 18 findings through any configured LLM backend."""

    name = "llm_findings"
    output_columns = FINDING_COLUMNS

    def __init__(self, lang: str = "auto", text_column: str = "text", max_tokens: int = 400,
                 temperature: float = 0.0, guided_json: bool = True, repair: bool = True,
                 lenient: bool = False):
        if lang not in ("auto", "en", "ja"):
            raise ValueError(f"lang must be auto, en or ja, not {lang!r}")
        super().__init__(text_column, max_tokens, temperature, guided_json, repair, lenient)
        self.lang = lang

    def prompts(self) -> list[PromptTemplate]:
        return {"en": [PROMPT_EN], "ja": [PROMPT_JA]}.get(self.lang, [PROMPT_EN, PROMPT_JA])

    def template_for(self, text: str) -> PromptTemplate:
        lang = self.lang
        if lang == "auto":
            from ctray.text.sentences import detect_lang

            lang = detect_lang(text)
        return PROMPT_JA if lang == "ja" else PROMPT_EN

    def messages_for(self, text: str) -> list[dict[str, str]]:
        return self.template_for(text).render(report=text.strip())

    def schema(self) -> dict[str, Any]:
        return label_schema()

    def parse_answer(self, text: str) -> dict[str, Any]:
        return parse_labels(text, self.lenient)

    def repair_text(self, problem: str) -> str:
        return REPAIR.format(problem=problem, keys=", ".join(KEYS))
