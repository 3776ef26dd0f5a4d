"""The rule labeler of label-cxr as a pipeline stage."""

from __future__ import annotations

from importlib import resources
from typing import Any

from ctray.pipeline.stage import Resources, RowError, Stage
from ctray.tasks.cxr.schema import EVIDENCE_COLUMNS, OBSERVATIONS

FLOAT_TYPES = {o: "float64" for o in OBSERVATIONS}


class CxrRuleStage(Stage):
    name = "rule_cxr"

    def __init__(self, text_column: str = "text", resources: Resources | None = None):
        self.text_column = text_column
        self.input_columns = ("report_id", text_column)
        self.output_columns = OBSERVATIONS + EVIDENCE_COLUMNS
        self.output_types = {**FLOAT_TYPES, **{c: "string" for c in EVIDENCE_COLUMNS}}
        self.resources = resources or Resources(num_cpus=0.5, batch_size=64)
        self.labeler = None

    def setup(self) -> None:
        from ctray.tasks.cxr.rules import CxrRuleLabeler

        self.labeler = CxrRuleLabeler()

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        text = row.get(self.text_column)
        if not isinstance(text, str) or not text.strip():
            raise RowError(f"row {row.get('report_id')!r}: field {self.text_column!r} is empty")
        return self.labeler.label(text).row()

    def describe(self) -> dict[str, Any]:
        from ctray.tasks.cxr import patterns

        return {"name": self.name, "terms": len(patterns.TERMS), "cues": len(patterns.CUES)}
