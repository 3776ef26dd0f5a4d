"""``ctray train-cxr-labeler``: fine-tune a causal LM as a CXR labeler (14 CheXpert
observations x {positive, negative, uncertain, blank}, ``sft_format``); the recipe is
:mod:`ctray.train.labeler`. The CT-RATE labeler is ``train-findings-labeler``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from ctray.tasks.cxr import sft_format
from ctray.train.labeler import LabelerTrainingConfig, train_labeler


class TrainLlmLabelerConfig(LabelerTrainingConfig):
    """Fine-tune an LLM on CXR reports and their CheXpert labels."""

    job: str = "train-cxr-labeler"
    task: Literal["cxr"] = Field("cxr", description="label set: cxr (14 CheXpert observations)")

    @field_validator("task", mode="before")
    @classmethod
    def _moved(cls, value: Any) -> Any:
        if value == "ctrate":
            raise ValueError("the CT-RATE labeler is trained by `ctray train-findings-labeler` "
                             "(configs/train_findings_labeler.yaml)")
        return value


def run_train_llm_labeler(cfg: TrainLlmLabelerConfig) -> dict[str, Any]:
    return train_labeler(cfg, sft_format)
