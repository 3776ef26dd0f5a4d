"""The J-ClinicalBench generation task: one rendered prompt per item, answered as is."""

from __future__ import annotations

from typing import Any

from ctray.llm.base import LLMRequest, LLMResponse
from ctray.llm.task import LLMTask
from ctray.tasks.jcb.registry import Setting


class JcbTask(LLMTask):
    """One benchmark item: the rendered prompt as a single user turn, the raw answer back.

    Parsing for scoring happens in ``score-jcb``: an odd answer is data, not a row error."""

    name = "jcb"
    input_columns = ("item_key", "prompt")
    output_columns = ("generated",)

    def __init__(self, setting: Setting, shot: str, max_tokens: int, temperature: float):
        self.setting_name = setting.name
        self.shot = shot
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.name = f"jcb_{setting.name}_{shot}"  # type: ignore[misc]

    def prompt_version(self) -> str:
        return f"jcb/{self.setting_name}/{self.shot}"

    def build_request(self, row: dict[str, Any]) -> LLMRequest:
        return LLMRequest([{"role": "user", "content": row["prompt"]}],
                          max_tokens=self.max_tokens, temperature=self.temperature)

    def parse(self, row: dict[str, Any], response: LLMResponse) -> dict[str, Any]:
        return {"generated": response.text}
