"""The LEAVS stages: a question as an LLM stage, with or without chain of thought
(reasoning, then the answer, as two plain LLM stages)."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd

from ctray.llm.task import COMPLETION_TOKENS_COL, LLM_CALLS_COL, PROMPT_TOKENS_COL, LLMStage
from ctray.pipeline.stage import ERROR_COL, LIGHT_TASK, Stage
from ctray.tasks.leavs.llm_tasks import (REASONING_COMPLETION_TOKENS, REASONING_PROMPT_TOKENS,
                                         AnswerTask, Question, ReasonTask)


def add_reasoning_usage(batch: pd.DataFrame) -> pd.DataFrame:
    """Count the reasoning request in the row's usage columns (the answer step
    overwrote them with its own)."""
    if REASONING_PROMPT_TOKENS not in batch.columns or batch.empty:
        return batch
    has = batch[REASONING_PROMPT_TOKENS].notna()
    out = batch.copy()
    for total, part in ((PROMPT_TOKENS_COL, REASONING_PROMPT_TOKENS),
                        (COMPLETION_TOKENS_COL, REASONING_COMPLETION_TOKENS)):
        base = pd.to_numeric(out.get(total, 0), errors="coerce").fillna(0)
        out[total] = (base + pd.to_numeric(out[part], errors="coerce").fillna(0)).astype(int)
    calls = pd.to_numeric(out.get(LLM_CALLS_COL, 0), errors="coerce").fillna(0)
    out[LLM_CALLS_COL] = (calls + has.astype(int)).astype(int)
    return out


class AddReasoningUsage(Stage):
    name = "add_reasoning_usage"

    def process_batch(self, batch):
        return add_reasoning_usage(batch)

    def apply(self, ds):
        # Bookkeeping, not a model: a light task, so it holds no actor's CPU beside the
        # two LLM stages (on 2 CPUs an extra actor left none for Ray's file listing).
        return ds.map_batches(add_reasoning_usage, batch_format="pandas", **LIGHT_TASK)


class CotLLMStage(LLMStage):
    """Reasoning then summary: a composite of two LLM stages on every backend.

    In a Ray Dataset it decomposes (``decompose``, as NeMo Curator's CompositeStage)
    into the reasoning stage, the answer stage and the usage merge, each added by
    its backend (actor pool or ray.data.llm processor); rows whose reasoning failed
    pass the answer stage untouched. ``process_batch`` runs both steps in one
    process, for Serve replicas that answer one report.
    """

    def __init__(self, question: Question, backend_config, cot_max_tokens: int,
                 repair: bool = True):
        self.question = question
        self.reason_task = ReasonTask(question, cot_max_tokens, backend_config.temperature)
        super().__init__(AnswerTask(question, cot=True, temperature=backend_config.temperature,
                                    repair=repair), backend_config)
        self.input_columns = question.input_columns
        self.output_columns = self.output_columns + self.reason_task.output_columns
        self._reason_stage: LLMStage | None = None

    def setup(self) -> None:
        super().setup()
        self._reason_stage = LLMStage(self.reason_task, self.backend_config, self.resources)
        self._reason_stage.backend = self.backend

    def decompose(self) -> list[Stage]:
        # The two steps share the composite's budget: one CoT question costs the CPUs
        # (GPUs) of one stage, as it did when both ran in one actor.
        half = replace(self.resources, num_cpus=self.resources.num_cpus / 2,
                       num_gpus=self.resources.num_gpus / 2)
        return [LLMStage(self.reason_task, self.backend_config, half),
                LLMStage(self.task, self.backend_config, half),
                AddReasoningUsage()]

    def apply(self, ds):
        for stage in self.decompose():
            ds = stage.apply(ds)
        return ds

    def process_batch(self, batch: pd.DataFrame) -> pd.DataFrame:
        assert self._reason_stage is not None, "setup() was not called"
        reasoned = self._reason_stage.process_batch(batch)
        failed = (reasoned[ERROR_COL].notna() if ERROR_COL in reasoned.columns
                  else pd.Series(False, index=reasoned.index))
        parts = [reasoned[failed]]
        if (~failed).any():
            parts.insert(0, add_reasoning_usage(super().process_batch(reasoned[~failed])))
        out = pd.concat(parts) if len(parts) > 1 else parts[0]
        return out.loc[batch.index]


def question_stage(question: Question, backend_config, cot: bool, cot_max_tokens: int,
                   repair: bool = True) -> LLMStage:
    """The stage asking ``question``: CoT pair where the question has a summary step."""
    if cot and question.summary is not None:
        return CotLLMStage(question, backend_config, cot_max_tokens, repair)
    return LLMStage(AnswerTask(question, cot=False, temperature=backend_config.temperature,
                               repair=repair), backend_config)
