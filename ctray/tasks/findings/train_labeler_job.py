"""``ctray train-findings-labeler``: fine-tune a causal LM as a CT-RATE labeler (the 18
findings x {0, 1} as a JSON list of positives, ``sft_format``); the recipe is
:mod:`ctray.train.labeler`, shared with the CXR labeler (``train-cxr-labeler``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ctray.tasks.findings import sft_format
from ctray.train.labeler import LabelerTrainingConfig, SftCheckpoint, train_labeler


class TrainFindingsLabelerConfig(LabelerTrainingConfig):
    """Fine-tune an LLM on CT reports and their CT-RATE finding labels."""

    job: str = "train-findings-labeler"
    task: Literal["ctrate"] = Field("ctrate", description="label set: ctrate (18 CT findings)")
    checkpoint: SftCheckpoint = Field(
        default_factory=lambda: SftCheckpoint(name="train_findings_labeler"),
        description="checkpoint folder and retention")


def run_train_findings_labeler(cfg: TrainFindingsLabelerConfig) -> dict[str, Any]:
    return train_labeler(cfg, sft_format)
