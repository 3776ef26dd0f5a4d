"""LLM labeler for the 14 CheXpert observations: one JSON object per report.

Answer format ``json-4class`` (the default, zero-shot): an object with all 14
observation names as keys, each value one of "positive", "negative", "uncertain",
"blank". The request carries that JSON schema, which the vLLM and OpenAI backends
enforce while decoding; for backends that cannot (local transformers, fake) the
same instruction is in the prompt and the answer is validated strictly (missing or
unknown keys, other values, text around the object are errors). An unusable answer
gets one repair request naming the problem; a second failure is a row error that
keeps the raw answer. ``lenient`` accepts one object inside prose or a code fence.

Answer format ``sft``: the prompt and answer of a model fine-tuned by
``ctray train-cxr-labeler --task cxr`` (``ctray.tasks.cxr.sft_format``), so the
fine-tuned model is asked exactly what it was trained on.
"""

from __future__ import annotations

import json
from typing import Any

from ctray.llm.prompts import PromptTemplate
from ctray.llm.label_task import ReportLabelTask, label_problems
from ctray.tasks.cxr import sft_format
from ctray.tasks.cxr.schema import CLASS_WORDS, OBSERVATIONS, observation_for

ANSWER_FORMATS = ("json-4class", "sft")
_WORDS = tuple(CLASS_WORDS)  # positive, negative, uncertain, blank


def label_schema() -> dict[str, Any]:
    """JSON schema of a valid ``json-4class`` answer: every key required, no other key."""
    return {
        "type": "object",
        "properties": {o: {"type": "string", "enum": list(_WORDS)} for o in OBSERVATIONS},
        "required": list(OBSERVATIONS),
        "additionalProperties": False,
    }


_KEY_LIST = "\n".join(f"- {o}" for o in OBSERVATIONS)

PROMPT = PromptTemplate(
    name="cxr-json-4class",
    system=("You label chest X-ray reports with the 14 CheXpert observations. You answer "
            "with a single JSON object and nothing else."),
    user=(
        "For each observation below write \"positive\" if the report states it is present, "
        "\"negative\" if the report states it is absent (including \"normal\", \"clear\" or "
        "\"resolved\"), \"uncertain\" if the report hedges (possible, likely, may, cannot "
        "exclude, versus, borderline, no new) and \"blank\" if the report does not mention it. "
        "Lung Opacity is also positive when atelectasis, consolidation, pneumonia, edema or a "
        "lung lesion is positive. No Finding is \"positive\" only when no other observation "
        "except Support Devices is positive or uncertain, otherwise \"blank\".\n\n"
        "Observations (use exactly these keys):\n" + _KEY_LIST + "\n\n"
        "Report:\n\"\"\"\n{report}\n\"\"\"\n\n"
        "Answer with one JSON object with exactly these 14 keys; each value is one of "
        "\"positive\", \"negative\", \"uncertain\", \"blank\". No code block, no other text."
    ),
)

REPAIR = ("That answer could not be used: {problem}. Reply again with only one JSON object "
          "with exactly these keys: {keys}. Each value must be \"positive\", \"negative\", "
          "\"uncertain\" or \"blank\". No code block, no other text.")


class LabelParseError(ValueError):
    pass


def parse_labels(text: str, lenient: bool = False) -> dict[str, float]:
    """observation -> 1.0/0.0/-1.0/NaN from a ``json-4class`` answer, or LabelParseError
    (whose message never quotes the answer: it may echo report text)."""
    body = (text or "").strip()
    if not body:
        raise LabelParseError("the answer is empty")
    if lenient:
        from ctray.text.json_extract import JSONAnswerError, extract_json_object

        try:
            obj: Any = extract_json_object(body, single=True)
        except JSONAnswerError as exc:
            raise LabelParseError(str(exc)) from None
    else:
        if body.startswith("```"):
            raise LabelParseError("the answer is wrapped in a code block")
        try:
            obj = json.loads(body)
        except json.JSONDecodeError as exc:
            if "{" in body and not body.startswith("{"):
                raise LabelParseError("the answer has text around the JSON object") from None
            raise LabelParseError(f"the answer is not valid JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise LabelParseError(f"the answer is a JSON {type(obj).__name__}, not an object")
    labels: dict[str, float] = {}
    extra, bad = [], []
    for key, value in obj.items():
        obs = observation_for(key)
        if obs is None:
            extra.append(str(key)[:40])
            continue
        if obs in labels:
            raise LabelParseError(f"observation {obs!r} appears twice")
        word = value.strip().lower() if isinstance(value, str) else None
        if word not in CLASS_WORDS:
            bad.append(f"{obs}={json.dumps(value)[:20]}")
            continue
        labels[obs] = CLASS_WORDS[word]
    missing = [o for o in OBSERVATIONS if o not in labels and o not in {b.split('=')[0] for b in bad}]
    problems = label_problems(missing, extra, bad, "positive/negative/uncertain/blank")
    if problems:
        raise LabelParseError(problems)
    return {o: labels[o] for o in OBSERVATIONS}


class CxrLLMTask(ReportLabelTask):
    """Label one report with the 14 observations through any configured LLM backend."""

    name = "llm_cxr"
    output_columns = OBSERVATIONS

    def __init__(self, text_column: str = "text", max_tokens: int = 300,
                 temperature: float = 0.0, guided_json: bool = True, repair: bool = True,
                 lenient: bool = False, answer_format: str = "json-4class"):
        if answer_format not in ANSWER_FORMATS:
            raise ValueError(f"answer_format must be one of {ANSWER_FORMATS}, not {answer_format!r}")
        super().__init__(text_column, max_tokens, temperature, guided_json, repair, lenient)
        self.answer_format = answer_format

    def prompts(self) -> list[PromptTemplate]:
        return [PROMPT] if self.answer_format == "json-4class" else []

    def prompt_version(self) -> str:
        if self.answer_format == "sft":
            return str(sft_format.PROMPT_VERSION)
        return super().prompt_version()

    def schema(self) -> dict[str, Any] | None:
        return label_schema() if self.answer_format == "json-4class" else sft_format.json_schema()

    def messages_for(self, text: str) -> list[dict[str, str]]:
        if self.answer_format == "sft":
            return sft_format.build_messages(text)
        return PROMPT.render(report=text.strip())

    def parse_answer(self, text: str) -> dict[str, Any]:
        if self.answer_format == "sft":
            labels = sft_format.parse_answer(text)
            return {o: float(labels.get(o, float("nan"))) for o in OBSERVATIONS}
        return parse_labels(text, self.lenient)

    def can_repair(self) -> bool:
        # A fine-tuned model answers its trained format or nothing: no repair dialogue.
        return self.repair and self.answer_format != "sft"

    def repair_text(self, problem: str) -> str:
        return REPAIR.format(problem=problem, keys=", ".join(OBSERVATIONS))
