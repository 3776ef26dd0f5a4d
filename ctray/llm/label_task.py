"""ReportLabelTask: one report in, one JSON object of labels out.

The shape every LLM labeler shares (CT-RATE findings, CXR observations): the report
text is checked, the prompt may be guided by a JSON schema, an unreadable answer
becomes a row error naming the field, and one repair request may follow. A labeler
supplies only its prompt, schema, answer parser and repair wording.
"""

from __future__ import annotations

from typing import Any

from ctray.llm.base import LLMRequest, LLMResponse
from ctray.llm.task import LLMTask
from ctray.pipeline.stage import RowError


def label_problems(missing: list, extra: list, bad: list, allowed: str) -> str | None:
    """One message for everything wrong with a labels object (None when nothing is),
    so a repair request can name every problem at once."""
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if extra:
        problems.append(f"unknown keys {extra}")
    if bad:
        problems.append(f"values other than {allowed}: {bad}")
    return "; ".join(problems) or None


class ReportLabelTask(LLMTask):
    """The shape of the JSON report labelers: text check, guided schema, parse-or-row-error, one
    repair request."""

    def __init__(self, text_column: str = "text", max_tokens: int = 400,
                 temperature: float = 0.0, guided_json: bool = True, repair: bool = True,
                 lenient: bool = False):
        self.text_column = text_column
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.guided_json = guided_json
        self.repair = repair
        self.lenient = lenient
        self.input_columns = ("report_id", text_column)

    # -- what a labeler supplies --
    def messages_for(self, text: str) -> list[dict[str, str]]:
        """The chat messages that ask about one report."""
        raise NotImplementedError

    def schema(self) -> dict[str, Any] | None:
        """The JSON schema guiding the decoder (used when ``guided_json``)."""
        return None

    def parse_answer(self, text: str) -> dict[str, Any]:
        """Label columns from the answer; raise ValueError with a message that does not
        quote the answer (it may hold report text)."""
        raise NotImplementedError

    def repair_text(self, problem: str) -> str:
        """The follow-up message after an unusable answer (names the problem)."""
        raise NotImplementedError

    def can_repair(self) -> bool:
        """Whether an unusable answer gets one repair request."""
        return self.repair

    # -- the shared behaviour --
    def report_text(self, row: dict[str, Any]) -> str:
        """The row's report text (a row error when it is empty)."""
        text = row.get(self.text_column)
        if not isinstance(text, str) or not text.strip():
            raise RowError(f"row {row.get('report_id')!r}: field {self.text_column!r} is empty")
        return text

    def request(self, messages: list[dict[str, str]]) -> LLMRequest:
        """The request for one report's messages."""
        return LLMRequest(messages, max_tokens=self.max_tokens, temperature=self.temperature,
                          json_schema=self.schema() if self.guided_json else None)

    def build_request(self, row: dict[str, Any]) -> LLMRequest:
        """The request for one row."""
        return self.request(self.messages_for(self.report_text(row)))

    def parse(self, row: dict[str, Any], response: LLMResponse) -> dict[str, Any]:
        """The labels of one answer (a row error when it does not parse)."""
        try:
            return self.parse_answer(response.text)
        except ValueError as exc:
            raise RowError(f"row {row.get('report_id')!r}: field llm_raw: {exc}") from None

    def repair_request(self, row: dict[str, Any], response: LLMResponse,
                       error: RowError) -> LLMRequest | None:
        """The follow-up request after an unusable answer, or None."""
        if not self.can_repair():
            return None
        first = self.build_request(row)
        problem = str(error).split("llm_raw: ", 1)[-1]
        return self.request(first.messages + [{"role": "assistant", "content": response.text},
                                              {"role": "user", "content": self.repair_text(problem)}])
