"""The demo's LLM task: a yes/no question about one finding per report."""

from __future__ import annotations

from typing import Any

from ctray.llm.base import LLMRequest, LLMResponse
from ctray.llm.prompts import PromptTemplate
from ctray.llm.task import LLMTask
from ctray.pipeline.stage import RowError


YES_NO = ["yes", "no"]


QUESTION = PromptTemplate(
    name="demo-finding-question",
    system="You are a radiologist reading chest CT reports. Answer with one word: yes or no.",
    user="Report:\n{text}\n\nDoes this report describe {finding}? Answer yes or no.",
)


class FindingQuestion(LLMTask):
    """"Does the report describe X?" answered as one of yes/no (guided choice)."""

    name = "finding_question"
    input_columns = ("report_id", "text")
    output_columns = ("answer",)

    def __init__(self, finding: str):
        self.finding = finding

    def prompts(self) -> list[PromptTemplate]:
        return [QUESTION]

    def build_request(self, row: dict[str, Any]) -> LLMRequest:
        return LLMRequest(QUESTION.render(text=row["text"], finding=self.finding),
                          max_tokens=4, choices=YES_NO)

    def parse(self, row: dict[str, Any], response: LLMResponse) -> dict[str, Any]:
        answer = response.text.strip().lower().rstrip(".")
        if answer not in YES_NO:
            raise RowError(f"row {row['report_id']!r}: answer {answer[:20]!r} is not yes/no")
        return {"answer": answer}
