"""LLMTask (what to ask, how to read the answer) and LLMStage (a Ray Data stage).

A task supplies ``build_request(row)`` and ``parse(row, response)``; the backend
comes from configuration. ``parse`` raises :class:`RowError` for an unusable answer;
when the task offers ``repair_request`` the stage asks once more (e.g. "answer
with valid JSON only"), and a second failure becomes a row error with the raw
output kept in the errors table.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pandas as pd

from ctray.llm import registry
from ctray.llm.base import LLMBackend, LLMRequest, LLMResponse
from ctray.llm.prompts import PromptTemplate
from ctray.pipeline.stage import Resources, RowError, Stage, mark_error

RAW_COL = "llm_raw"
PROMPT_TOKENS_COL = "prompt_tokens"
COMPLETION_TOKENS_COL = "completion_tokens"
LLM_CALLS_COL = "llm_calls"
PROMPT_VERSION_COL = "prompt_version"
MODEL_COL = "llm_model"


class LLMTask:
    """Subclass per question type. Keep it picklable: it travels to Ray workers."""

    name: ClassVar[str] = "llm_task"
    input_columns: tuple[str, ...] = ()
    output_columns: tuple[str, ...] = ()

    def prompts(self) -> list[PromptTemplate]:
        """Every template the task may use (their versions go into the manifest)."""
        return []

    def prompt_version(self) -> str:
        """The versions of the task's prompts (part of the run's fingerprint)."""
        tags = sorted(p.version_tag for p in self.prompts())
        return ",".join(tags)

    def build_request(self, row: dict[str, Any]) -> LLMRequest:
        """The request for one row (raise for a row that cannot be asked)."""
        raise NotImplementedError

    def parse(self, row: dict[str, Any], response: LLMResponse) -> dict[str, Any]:
        """The output columns of one answer (raise RowError when it is unusable)."""
        raise NotImplementedError

    def repair_request(self, row: dict[str, Any], response: LLMResponse,
                       error: RowError) -> LLMRequest | None:
        """A follow-up request after an unparseable answer, or None for no retry."""
        return None


def _sum_usage(a: LLMResponse, b: LLMResponse) -> tuple[int, int]:
    return a.prompt_tokens + b.prompt_tokens, a.completion_tokens + b.completion_tokens


class LLMStage(Stage):
    """Runs an :class:`LLMTask` on a batch through the configured backend."""

    def __init__(self, task: LLMTask, backend_config, resources: Resources | None = None):
        self.task = task
        self.backend_config = backend_config
        self.name = task.name  # type: ignore[misc]
        self.input_columns = task.input_columns
        self.output_columns = tuple(task.output_columns) + (
            RAW_COL, PROMPT_TOKENS_COL, COMPLETION_TOKENS_COL, LLM_CALLS_COL,
            PROMPT_VERSION_COL, MODEL_COL,
        )
        self.resources = resources or backend_config.resources()
        self.backend: LLMBackend | None = None

    def setup(self) -> None:
        """Build the in-process backend (in the worker, once)."""
        self.backend = registry.make_backend(self.backend_config)

    def preflight(self) -> None:
        """The backend kind's driver-side check (API key set, vLLM importable)."""
        registry.preflight(self.backend_config)

    def describe(self) -> dict[str, Any]:
        """Name, prompt version, backend and engine: the stage's manifest entry."""
        return {
            "name": self.name,
            "prompt_version": self.task.prompt_version(),
            "backend": registry.describe(self.backend_config),
            "engine": registry.engine(self.backend_config),
        }

    def apply(self, ds):
        """Add the stage to ``ds`` the way its backend kind runs."""
        # The backend decides: an actor pool of in-process backends, or (vLLM) a
        # ray.data.llm processor / the shared engine.
        engine = registry.engine(self.backend_config)
        print(f"[ctray] LLM stage {self.name}: engine "
              + ", ".join(f"{k}={v}" for k, v in engine.items() if v is not None), flush=True)
        return registry.apply_stage(self, ds)

    # -- batch path shared by the in-process backends (hf, openai, fake) --
    def process_batch(self, batch: pd.DataFrame) -> pd.DataFrame:
        """Ask the backend for every row, repair once where the task allows, parse."""
        assert self.backend is not None, "setup() was not called"
        rows = batch.to_dict("records")
        requests: dict[int, LLMRequest] = {}
        out: list[dict[str, Any] | None] = [None] * len(rows)
        for i, row in enumerate(rows):
            try:
                requests[i] = self.task.build_request(row)
                self.backend.check_fits(requests[i])
            except Exception as exc:  # noqa: BLE001 - bad input is a row error
                out[i] = mark_error(row, self.name, exc)
                requests.pop(i, None)
        order = list(requests)
        responses = dict(zip(order, self.backend.generate([requests[i] for i in order])))

        retry: dict[int, tuple[LLMRequest, RowError]] = {}
        for i in order:
            result = self.finish(rows[i], responses[i])
            if isinstance(result, RowError):
                follow_up = (self.task.repair_request(rows[i], responses[i], result)
                             if responses[i].ok else None)
                if follow_up is not None:
                    retry[i] = (follow_up, result)
                else:
                    out[i] = self.error_row(rows[i], responses[i], result)
            else:
                out[i] = result
        if retry:
            keys = list(retry)
            second = self.backend.generate([retry[i][0] for i in keys])
            for i, response in zip(keys, second):
                merged = LLMResponse(response.text, *_sum_usage(responses[i], response),
                                     error=response.error)
                result = self.finish(rows[i], merged, calls=2)
                out[i] = (self.error_row(rows[i], merged, result, calls=2)
                          if isinstance(result, RowError) else result)
        return pd.DataFrame(out, index=batch.index)

    def finish(self, row: dict[str, Any], response: LLMResponse,
               calls: int = 1) -> dict[str, Any] | RowError:
        """The output row of one answer, or the RowError that makes it an error row."""
        if not response.ok:
            return RowError(f"{self.name}: backend error: {response.error}")
        try:
            parsed = self.task.parse(row, response)
        except RowError as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - a parser bug must not kill the batch
            return RowError(f"{self.name}: parse failed: {exc!r}")
        return {**row, **parsed, **self.accounting(response, calls)}

    def accounting(self, response: LLMResponse, calls: int) -> dict[str, Any]:
        """The bookkeeping columns of one answer (raw text, tokens, calls, prompt, model)."""
        return {
            RAW_COL: response.text,
            PROMPT_TOKENS_COL: response.prompt_tokens,
            COMPLETION_TOKENS_COL: response.completion_tokens,
            LLM_CALLS_COL: calls,
            PROMPT_VERSION_COL: self.task.prompt_version(),
            MODEL_COL: self.backend_config.model_label(),
        }

    def error_row(self, row, response: LLMResponse, error: RowError,
                  calls: int = 1) -> dict[str, Any]:
        # The raw answer stays with the error so nobody pays for the call twice to see it.
        """An error row that keeps the raw answer and its usage."""
        return mark_error({**row, **self.accounting(response, calls)}, self.name, error)
