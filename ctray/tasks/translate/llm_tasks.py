"""The translation LLM task: one report section in, its translation out."""

from __future__ import annotations

from typing import Any

import pandas as pd

from ctray.io.corpus import TEXT_COL, explode_sections
from ctray.llm.base import LLMRequest, LLMResponse
from ctray.llm.prompts import PromptTemplate
from ctray.llm.task import LLMTask
from ctray.pipeline.stage import ERROR_COL, RowError
from ctray.tasks.translate.parsing import TranslationParseError, extract_translation
from ctray.tasks.translate.prompts import TranslationPromptConfig

SOURCE_COL = "source_text"
SECTION_COL = "section"
TRANSLATION_COL = "translation"
BACK_TRANSLATION_COL = "back_translation"


# Japanese script, full-width forms, digits and the punctuation of reports (and the units
# written in Latin letters), so a guided answer is the marker line in Japanese.
_JA_ANSWER = "(?:[ぁ-ゖァ-ヺー一-龥々〆、。・「」（）％０-９0-9.,%/ ]|cm|mm|HU)+"


def answer_regex(marker: str, target_lang: str) -> str | None:
    """The answer format for engines that enforce a regex (vLLM): the marker, then the
    translation. Only for Japanese targets, whose script a regex can pin down."""
    import re

    return re.escape(marker) + " ?" + _JA_ANSWER if target_lang == "ja" else None


class TranslateTask(LLMTask):
    """Translate ``source_column`` of a (report_id, section) row into ``output_column``.

    The same class serves the back-translation pass with the columns swapped."""

    name = "translate"

    def __init__(self, prompt: TranslationPromptConfig, max_tokens: int = 1024,
                 temperature: float = 0.0, source_column: str = SOURCE_COL,
                 output_column: str = TRANSLATION_COL, repair: bool = False,
                 name: str = "translate"):
        self.prompt = prompt
        self.template = prompt.template()
        self.marker = prompt.resolved_marker()
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.source_column = source_column
        self.output_column = output_column
        self.repair = repair
        self.name = name  # type: ignore[misc]
        self.input_columns = ("report_id", SECTION_COL, source_column)
        self.output_columns = (output_column,)

    def prompts(self) -> list[PromptTemplate]:
        return [self.template]

    def _where(self, row: dict[str, Any]) -> str:
        return f"row {row.get('report_id')!r} section {row.get(SECTION_COL)!r}"

    def build_request(self, row: dict[str, Any]) -> LLMRequest:
        text = row.get(self.source_column)
        if not isinstance(text, str) or not text.strip():
            raise RowError(f"{self._where(row)}: field {self.source_column!r} is empty")
        section = str(row.get(SECTION_COL) or "")
        messages = self.template.render(source_text=text.strip(),
                                        section_label=self.prompt.section_label(section))
        return LLMRequest(messages, max_tokens=self.max_tokens, temperature=self.temperature,
                          regex=answer_regex(self.marker, self.prompt.target_lang))

    def parse(self, row: dict[str, Any], response: LLMResponse) -> dict[str, Any]:
        try:
            translation = extract_translation(response.text, self.marker, self.prompt.target_lang)
        except TranslationParseError as exc:
            raise RowError(f"{self._where(row)}: unusable answer: {exc}") from None
        return {self.output_column: translation}

    def repair_request(self, row: dict[str, Any], response: LLMResponse,
                       error: RowError) -> LLMRequest | None:
        if not self.repair:
            return None
        first = self.build_request(row)
        again = (f"The answer could not be read ({str(error).split(': ', 1)[-1]}). "
                 f"Reply again with a line containing only '{self.marker}' followed by the "
                 "translation and nothing else.")
        messages = first.messages + [{"role": "assistant", "content": response.text},
                                     {"role": "user", "content": again}]
        return LLMRequest(messages, max_tokens=self.max_tokens, temperature=self.temperature)


def section_rows(batch: pd.DataFrame, sections: list[str], all_sections: list[str]) -> pd.DataFrame:
    """One row per (report_id, section) with ``source_text``; other text columns dropped.

    A report that failed while being read and has no section text left would vanish
    in the fan-out; it keeps one row (first section) so its error reaches the errors
    table."""
    exploded = explode_sections(batch, sections)
    drop = [c for c in all_sections if c not in sections and c in exploded.columns]
    exploded = exploded.drop(columns=drop + [TEXT_COL], errors="ignore")
    if ERROR_COL in batch.columns:
        lost = batch[batch[ERROR_COL].notna() & ~batch["report_id"].isin(exploded["report_id"])]
        if len(lost):
            keep = [c for c in exploded.columns if c in lost.columns]
            orphans = lost[keep].assign(section=sections[0], source_text=None)
            exploded = pd.concat([exploded, orphans[exploded.columns]], ignore_index=True)
    return exploded.reset_index(drop=True)


def back_translation_rows(batch: pd.DataFrame) -> pd.DataFrame:
    """The first pass's results reduced to what the back-translation pass needs."""
    keep = ["report_id", SECTION_COL, SOURCE_COL, TRANSLATION_COL]
    return batch[[c for c in keep if c in batch.columns]]
