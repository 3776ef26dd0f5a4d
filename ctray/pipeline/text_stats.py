"""Per-report text statistics as a pipeline stage (used by the stats-text job and the demo)."""

from __future__ import annotations

from typing import Any

from ctray.pipeline.stage import Resources, RowError, Stage

STAT_KEYS = ("characters", "words", "sentences", "unique_words")


class TextStatsStage(Stage):
    """Characters, words (MeCab for Japanese), sentences and unique words of ``text``."""

    name = "text_stats"
    input_columns = ("text",)

    def __init__(self, lang: str = "auto", text_column: str = "text",
                 resources: Resources = Resources(batch_size=64)):
        self.lang = lang
        self.text_column = text_column
        self.input_columns = (text_column,)
        self.output_columns = tuple(f"{text_column}_{k}" for k in STAT_KEYS) + ("lang",)
        self.resources = resources

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        from ctray.text.sentences import detect_lang
        from ctray.text.stats import text_stats

        text = row.get(self.text_column)
        if not isinstance(text, str) or not text.strip():
            raise RowError(f"row {row.get('report_id')!r}: field {self.text_column!r} is empty")
        lang = detect_lang(text) if self.lang == "auto" else self.lang
        stats = text_stats(text, lang)
        return {**{f"{self.text_column}_{k}": stats[k] for k in STAT_KEYS}, "lang": lang}
