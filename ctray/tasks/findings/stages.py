"""The label-findings stages: the rule labeler and the trained classifier (the LLM labeler is an LLMStage of llm_tasks.FindingsLLMTask)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from ctray.errors import UserError
from ctray.pipeline.stage import Resources, RowError, Stage, mark_error
from ctray.tasks.findings.schema import FINDING_COLUMNS


PROB_PREFIX = "prob_"


PROB_COLUMNS = tuple(f"{PROB_PREFIX}{c}" for c in FINDING_COLUMNS)


WINDOWS_COL = "n_windows"


def _check_text(row: dict[str, Any], column: str) -> str:
    text = row.get(column)
    if not isinstance(text, str) or not text.strip():
        raise RowError(f"row {row.get('report_id')!r}: field {column!r} is empty")
    return text


class RuleLabelStage(Stage):
    name = "rule_findings"

    def __init__(self, lang: str = "auto", text_column: str = "text",
                 resources: Resources | None = None):
        from ctray.tasks.findings.rules import EVIDENCE_PREFIX

        self.lang = lang
        self.text_column = text_column
        self.input_columns = ("report_id", text_column)
        self.output_columns = FINDING_COLUMNS + tuple(f"{EVIDENCE_PREFIX}{c}" for c in FINDING_COLUMNS)
        self.resources = resources or Resources(num_cpus=0.5, batch_size=64)
        self.labeler = None

    def setup(self) -> None:
        from ctray.tasks.findings.rules import RuleLabeler

        self.labeler = RuleLabeler(self.lang)

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        from ctray.tasks.findings.rules import EVIDENCE_PREFIX

        result = self.labeler.label(_check_text(row, self.text_column))
        return {**result.labels,
                **{f"{EVIDENCE_PREFIX}{c}": result.evidence[c] for c in FINDING_COLUMNS}}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "lang": self.lang}


class ModelLabelStage(Stage):
    """The fine-tuned classifier (``FindingsClassifier``), one model per actor."""

    name = "model_findings"

    def __init__(self, model_path: str, device: str | None = None, text_column: str = "text",
                 resources: Resources | None = None, chunk_batch_size: int = 16,
                 dtype: str | None = None):
        self.model_path = model_path
        self.device = device
        self.text_column = text_column
        self.chunk_batch_size = chunk_batch_size
        self.dtype = dtype
        self.input_columns = ("report_id", text_column)
        self.output_columns = FINDING_COLUMNS + PROB_COLUMNS + (WINDOWS_COL,)
        self.resources = resources or Resources(num_cpus=1, batch_size=32)
        self.classifier = None

    def preflight(self) -> None:
        from pathlib import Path

        from ctray.tasks.findings.model import META_FILE

        if "://" not in self.model_path and Path(self.model_path).is_dir() \
                and not (Path(self.model_path) / "config.json").exists():
            raise UserError(f"{self.model_path} is not a model directory (no config.json); "
                            f"export one with ctray train-findings ({META_FILE} beside the weights)")

    def setup(self) -> None:
        from ctray.tasks.findings.model import FindingsClassifier

        self.classifier = FindingsClassifier.from_pretrained(
            self.model_path, device=self.device, chunk_batch_size=self.chunk_batch_size,
            dtype=self.dtype)

    def process_batch(self, batch: pd.DataFrame) -> pd.DataFrame:
        rows = batch.to_dict("records")
        good, out = [], [None] * len(rows)
        for i, row in enumerate(rows):
            try:
                _check_text(row, self.text_column)
                good.append(i)
            except RowError as exc:
                out[i] = mark_error(row, self.name, exc)
        if good:
            labels, probs = self.classifier.predict([rows[i][self.text_column] for i in good])
            windows = self.classifier.last_windows
            for k, i in enumerate(good):
                out[i] = {**rows[i],
                          **dict(zip(FINDING_COLUMNS, labels[k].tolist())),
                          **dict(zip(PROB_COLUMNS, probs[k].astype(float).tolist())),
                          WINDOWS_COL: int(windows[k])}
        return pd.DataFrame(out, index=batch.index)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model_path}
