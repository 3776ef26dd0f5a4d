"""What the review page knows about each labeling task: its label keys, the values a
label may take, and the gold-file layout the evaluators and trainers read.

- ``cxr``: the 14 CheXpert observations, 1 / 0 / -1 / blank; gold in the CheXpert
  layout (``report_id`` or the upload's ``uid`` column + the 14 display names, 1.0 /
  0.0 / -1.0 / empty), read by ``eval-cxr`` and ``train-cxr-labeler --task cxr``.
- ``ctrate``: the 18 CT-RATE findings, 1 / 0; gold in CT-RATE's multi-abnormality
  layout (``VolumeName`` + the 18 display names), read by ``eval-findings`` and
  ``train-findings``.
- ``leavs``: shown on the label page only (organ x finding type); not reviewable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ctray.tasks.cxr.schema import OBSERVATIONS
from ctray.tasks.findings.schema import COLUMN_TO_NAME, FINDING_COLUMNS, NAME_TO_COLUMN

# Deployment class -> task: how a deployed Serve app is recognised as a labeler.
LABELER_DEPLOYMENTS = {
    "CxrRulesService": "cxr", "CxrLLMLabeler": "cxr",
    "RuleLabelerService": "ctrate", "FindingsLabeler": "ctrate", "LLMFindingsLabeler": "ctrate",
    "LeavsReportService": "leavs",
}


@dataclass(frozen=True)
class ReviewTask:
    name: str
    title: str
    keys: tuple[str, ...]  # label keys as the labelers' JSON answers name them
    names: dict[str, str]  # key -> display name (the gold file's column header)
    allowed: tuple[float | None, ...]
    id_name: str  # default id column of the gold file

    def value(self, raw: Any) -> float | None:
        """A label from JSON or a table cell as 1.0 / 0.0 / -1.0 / None (blank);
        ValueError for anything outside the task's values."""
        if raw is None or (isinstance(raw, float) and math.isnan(raw)):
            number = None
        elif isinstance(raw, str):
            text = raw.strip().lower()
            number = None if text in ("", "nan", "none", "blank", "null") else float(text)
        elif isinstance(raw, bool):
            raise ValueError(f"{raw!r} is not a label value")
        else:
            number = float(raw)
        if number is not None and math.isnan(number):
            number = None
        if number not in self.allowed:
            shown = ", ".join("blank" if v is None else str(int(v)) for v in self.allowed)
            raise ValueError(f"{raw!r} is not one of {shown}")
        return number

    def key_for(self, column: str) -> str | None:
        """The label key of a table column in any of the layouts' spellings."""
        if column in self.keys:
            return column
        by_name = {n: k for k, n in self.names.items()}
        if column in by_name:
            return by_name[column]
        if self.name == "cxr":
            from ctray.tasks.cxr.schema import observation_for

            return observation_for(column)
        return NAME_TO_COLUMN.get(column)

    def header(self) -> list[str]:
        return [self.names[k] for k in self.keys]


TASKS: dict[str, ReviewTask] = {
    "cxr": ReviewTask("cxr", "Chest X-ray: 14 CheXpert observations", OBSERVATIONS,
                      {o: o for o in OBSERVATIONS}, (1.0, 0.0, -1.0, None), "report_id"),
    "ctrate": ReviewTask("ctrate", "Chest CT: 18 CT-RATE findings", FINDING_COLUMNS,
                         dict(COLUMN_TO_NAME), (1.0, 0.0), "VolumeName"),
}
