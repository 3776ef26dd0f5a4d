"""The LEAVS questions as LLM tasks (the stages that run them: ``stages``).

A :class:`Question` knows what one row asks (template fields, answer options,
parsing). It becomes either one direct request (:class:`AnswerTask` without CoT)
or a reasoning request followed by a summary request in the same conversation
(``stages.CotLLMStage``): both requests of a batch go to the engine as one batch
each, and the summary repeats the reasoning conversation as its prefix, which a
prefix-caching engine does not recompute.
"""

from __future__ import annotations

import re
from typing import Any


from ctray.llm.base import LLMRequest, LLMResponse
from ctray.llm.prompts import PromptTemplate
from ctray.llm.task import LLMTask
from ctray.pipeline.stage import RowError
from ctray.tasks.leavs import prompts as P
from ctray.tasks.leavs.schema import FINDING_TYPES
from ctray.tasks.leavs.parsing import (AnswerParseError, parse_choice, parse_sentence_numbers,
                                       parse_types)

REASONING_COL = "reasoning"
REASONING_PROMPT_TOKENS = "reasoning_prompt_tokens"
REASONING_COMPLETION_TOKENS = "reasoning_completion_tokens"


def _variant(template: PromptTemplate, suffix: str, tag: str) -> PromptTemplate:
    if not suffix:
        return template
    return PromptTemplate(name=f"{template.name}-{tag}", system=template.system,
                          user=f"{template.user}\n\n{suffix}")


class Question:
    """One kind of LEAVS question; subclasses fill in the row-specific parts."""

    name = "question"
    body: PromptTemplate
    summary: PromptTemplate | None = None  # None: asked directly even with CoT on
    direct: str = ""  # answer-format instruction of the no-CoT variant (and repairs)
    input_columns: tuple[str, ...] = ()
    output_columns: tuple[str, ...] = ()
    answer_max_tokens = 16

    @property
    def cot_template(self) -> PromptTemplate:
        return _variant(self.body, P.COT, "cot")

    @property
    def direct_template(self) -> PromptTemplate:
        return _variant(self.body, self.direct, "direct")

    def fields(self, row: dict[str, Any]) -> dict[str, str]:
        raise NotImplementedError

    def choices(self, row: dict[str, Any]) -> list[str] | None:
        return None

    def regex(self, row: dict[str, Any]) -> str | None:
        """The answer format as a regex, for engines that enforce one (vLLM); other
        backends generate freely and ``parse`` checks the answer."""
        return None

    def parse(self, row: dict[str, Any], text: str) -> dict[str, Any]:
        raise NotImplementedError

    def where(self, row: dict[str, Any]) -> str:
        return f"row {row.get('report_id')!r} organ {row.get('organ')!r}"


def _sentences(row: dict[str, Any], column: str, where: str) -> list[str]:
    sentences = P.loads_list(row.get(column))
    if not sentences:
        raise RowError(f"{where}: field {column!r} holds no sentences")
    return [str(s) for s in sentences]


class ListSentences(Question):
    """Stage 1a: which numbered sentences are informative for the organ (no CoT)."""

    name = "filter_list"
    body = P.LIST_SENTENCES
    input_columns = ("report_id", "organ", "sentences_json")
    output_columns = ("listed", "listed_dropped")
    answer_max_tokens = 96
    repair_text = ('Reply with one line: "Sentences:" followed by the sentence numbers '
                   'separated by commas, or "Sentences: none".')

    def fields(self, row):
        return {"organ": row["organ"],
                "numbered_sentences": P.numbered(_sentences(row, "sentences_json", self.where(row)))}

    def regex(self, row):
        return r"Sentences: (none|[1-9][0-9]?(, [1-9][0-9]?)*)"

    def parse(self, row, text):
        n = len(P.loads_list(row["sentences_json"]))
        valid, dropped = parse_sentence_numbers(text, n)
        return {"listed": ",".join(map(str, valid)), "listed_dropped": ",".join(map(str, dropped))}


class CheckSentence(Question):
    """Stage 1b: is this one sentence informative for the organ (yes/no)."""

    name = "filter_check"
    body = P.CHECK_SENTENCE
    summary = P.CHECK_SUMMARY
    direct = P.CHECK_DIRECT
    input_columns = ("report_id", "organ", "sentence_idx", "sentences_json")
    output_columns = ("informative",)

    def fields(self, row):
        sentences = _sentences(row, "sentences_json", self.where(row))
        idx = int(row["sentence_idx"])
        if not 1 <= idx <= len(sentences):
            raise RowError(f"{self.where(row)}: sentence_idx {idx} outside 1..{len(sentences)}")
        return {"organ": row["organ"], "numbered_sentences": P.numbered(sentences),
                "sentence_number": str(idx), "sentence": sentences[idx - 1]}

    def choices(self, row):
        return list(P.YES_NO)

    def parse(self, row, text):
        return {"informative": bool(parse_choice(text, P.YES_NO))}

    def where(self, row):
        return f"{super().where(row)} sentence {row.get('sentence_idx')}"


class FindingTypes(Question):
    """Stage 2: which finding types the organ's sentences describe (several allowed)."""

    name = "finding_types"
    body = P.FINDING_TYPES_Q
    summary = P.TYPES_SUMMARY
    direct = P.TYPES_DIRECT
    input_columns = ("report_id", "organ", "evidence_json")
    output_columns = ("types",)
    answer_max_tokens = 64

    def fields(self, row):
        return {"organ": row["organ"],
                "evidence": P.bulleted(_sentences(row, "evidence_json", self.where(row)))}

    def regex(self, row):
        names = "|".join(re.escape(t) for t in FINDING_TYPES)
        return rf"Types: ({names})(, ({names}))*"

    def parse(self, row, text):
        return {"types": ",".join(parse_types(text))}


class _TypeQuestion(Question):
    def _type(self, row) -> tuple[str, str]:
        t = row.get("finding_type")
        if t not in P.TYPE_DEFINITIONS:
            raise RowError(f"{self.where(row)}: unknown finding_type {t!r}")
        return P.TYPE_DEFINITIONS[t]

    def where(self, row):
        return f"{super().where(row)} type {row.get('finding_type')!r}"


class Certainty(_TypeQuestion):
    """Stage 3: how the report states a finding of one type (six options -> codes)."""

    name = "certainty"
    body = P.CERTAINTY_Q
    summary = P.CERTAINTY_SUMMARY
    direct = P.CERTAINTY_DIRECT
    input_columns = ("report_id", "organ", "finding_type", "evidence_json")
    output_columns = ("certainty",)
    answer_max_tokens = 24

    def fields(self, row):
        name, definition = self._type(row)
        return {"organ": row["organ"], "type_name": name, "type_definition": definition,
                "evidence": P.bulleted(_sentences(row, "evidence_json", self.where(row)))}

    def choices(self, row):
        return list(P.CERTAINTY_OPTIONS)

    def parse(self, row, text):
        options = {k: int(v[0]) for k, v in P.CERTAINTY_OPTIONS.items()}
        return {"certainty": int(parse_choice(text, options, P.CERTAINTY_ALIASES))}


class Urgency(_TypeQuestion):
    """Stage 4: urgency (0-3) of a present or possible finding."""

    name = "urgency"
    body = P.URGENCY_Q
    summary = P.URGENCY_SUMMARY
    direct = P.URGENCY_DIRECT
    input_columns = ("report_id", "organ", "finding_type", "certainty", "evidence_json")
    output_columns = ("urgency",)
    answer_max_tokens = 16

    def fields(self, row):
        name, definition = self._type(row)
        phrase = P.CERTAINTY_PHRASES.get(int(row["certainty"]))
        if phrase is None:
            raise RowError(f"{self.where(row)}: urgency is asked only for present or possible "
                           f"findings, not certainty {row['certainty']}")
        return {"organ": row["organ"], "type_name": name, "type_definition": definition,
                "certainty_phrase": phrase,
                "evidence": P.bulleted(_sentences(row, "evidence_json", self.where(row)))}

    def choices(self, row):
        return list(P.URGENCY_OPTIONS)

    def parse(self, row, text):
        options = {k: int(v[0]) for k, v in P.URGENCY_OPTIONS.items()}
        return {"urgency": int(parse_choice(text, options, P.URGENCY_ALIASES))}


QUESTIONS: dict[str, type[Question]] = {
    q.name: q for q in (ListSentences, CheckSentence, FindingTypes, Certainty, Urgency)}


# ----------------------------------------------------------------------- tasks

class ReasonTask(LLMTask):
    """The chain-of-thought request: free text, kept in ``reasoning``."""

    def __init__(self, question: Question, max_tokens: int, temperature: float = 0.0):
        self.question = question
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.name = f"{question.name}_reasoning"  # type: ignore[misc]
        self.input_columns = question.input_columns
        self.output_columns = (REASONING_COL, REASONING_PROMPT_TOKENS, REASONING_COMPLETION_TOKENS)

    def prompts(self) -> list[PromptTemplate]:
        return [self.question.cot_template]

    def build_request(self, row):
        messages = self.question.cot_template.render(**self.question.fields(row))
        return LLMRequest(messages, max_tokens=self.max_tokens, temperature=self.temperature)

    def parse(self, row, response: LLMResponse):
        text = (response.text or "").strip()
        if not text:
            raise RowError(f"{self.question.where(row)}: empty reasoning answer")
        return {REASONING_COL: text, REASONING_PROMPT_TOKENS: response.prompt_tokens,
                REASONING_COMPLETION_TOKENS: response.completion_tokens}


class AnswerTask(LLMTask):
    """The parseable answer: after the reasoning (CoT) or asked directly."""

    def __init__(self, question: Question, cot: bool, temperature: float = 0.0,
                 repair: bool = True):
        self.question = question
        self.cot = cot and question.summary is not None
        self.temperature = temperature
        self.repair = repair
        self.name = question.name  # type: ignore[misc]
        self.input_columns = question.input_columns + ((REASONING_COL,) if self.cot else ())
        self.output_columns = question.output_columns

    def prompts(self) -> list[PromptTemplate]:
        q = self.question
        return [q.cot_template, q.summary] if self.cot else [q.direct_template]

    def messages(self, row) -> list[dict[str, str]]:
        q = self.question
        fields = q.fields(row)
        if not self.cot:
            return q.direct_template.render(**fields)
        reasoning = row.get(REASONING_COL)
        if not isinstance(reasoning, str) or not reasoning.strip():
            raise RowError(f"{q.where(row)}: no reasoning to summarise")
        return (q.cot_template.render(**fields)
                + [{"role": "assistant", "content": reasoning}]
                + q.summary.render(**fields))

    def build_request(self, row):
        choices = self.question.choices(row)
        return LLMRequest(self.messages(row), max_tokens=self.question.answer_max_tokens,
                          temperature=self.temperature, choices=choices,
                          regex=None if choices else self.question.regex(row))

    def parse(self, row, response: LLMResponse):
        try:
            return self.question.parse(row, response.text)
        except AnswerParseError as exc:
            raise RowError(f"{self.question.where(row)}: unusable answer: {exc}") from None

    def repair_request(self, row, response, error):
        if not self.repair:
            return None
        q = self.question
        hint = getattr(q, "repair_text", None) or q.direct
        again = f"Your answer could not be read ({str(error).rsplit(': ', 1)[-1]}). {hint}"
        messages = self.messages(row) + [{"role": "assistant", "content": response.text},
                                         {"role": "user", "content": again}]
        return LLMRequest(messages, max_tokens=q.answer_max_tokens,
                          temperature=self.temperature, choices=q.choices(row))


# ---------------------------------------------------------------------- stages
