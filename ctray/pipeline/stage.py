"""Stage: one step of a job, a callable class with declared columns and resources.

Ray Data runs a stage as an actor pool (``map_batches`` with a class), so ``setup``
(model loading) happens once per worker. The stage sees pandas batches and returns
them with its output columns added; every other column passes through, so a row's
inputs and keys survive to the output.

Per-row error capture lives here: a row that makes ``process_batch`` raise is
retried alone, and a row that still fails is marked with ``_error`` /
``_error_stage`` and passed along untouched by later stages. The runner writes such
rows to the errors table; the job goes on.
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass
from typing import Any, ClassVar

import pandas as pd

# Re-exported: stages and jobs take these names from here.
from ctray.io.columns import (ATTEMPT_COL, ERROR_COL, ERROR_STAGE_COL, ERROR_TYPE_COL,
                              INPUT_COLS_COL, INTERNAL_COLS, LIGHT_TASK)

__all__ = ["ATTEMPT_COL", "ERROR_COL", "ERROR_STAGE_COL", "ERROR_TYPE_COL", "INPUT_COLS_COL",
           "INTERNAL_COLS", "LIGHT_TASK", "Resources", "RowError", "Stage", "StageWorker",
           "check_columns", "frame_keeping_types", "has_error", "keep_int_types", "mark_error"]

log = logging.getLogger(__name__)


class RowError(ValueError):
    """Bad input or unusable model output for one row; message names row and field."""


@dataclass(frozen=True)
class Resources:
    # Fractional by default: on a 2-core laptop, whole-CPU actors for every stage
    # would leave no CPU for the read and write tasks and the pipeline would stall.
    num_cpus: float = 0.5
    num_gpus: float = 0.0
    batch_size: int = 32
    # int n: fixed pool of n actors; (m, n): autoscaling pool.
    concurrency: int | tuple[int, int] = 1
    # For a stage that carries state from batch to batch (the last scan read): the run
    # keeps the blocks in input order (run_pipeline), and each actor gets one batch in
    # flight, since Ray Data otherwise lets an actor run a later batch while an earlier
    # one waits for its input (``allow_out_of_order_execution`` would say so too,
    # through the ``ray_remote_args`` that Ray 2.64 removes).
    in_order: bool = False

    def map_batches_kwargs(self) -> dict[str, Any]:
        from ray.data import ActorPoolStrategy

        in_flight = {"max_tasks_in_flight_per_actor": 1} if self.in_order else {}
        if isinstance(self.concurrency, int):
            pool = ActorPoolStrategy(size=self.concurrency, **in_flight)
        else:
            pool = ActorPoolStrategy(min_size=self.concurrency[0], max_size=self.concurrency[1],
                                     **in_flight)
        kwargs: dict[str, Any] = {
            "num_cpus": self.num_cpus,
            "batch_size": self.batch_size,
            "compute": pool,
        }
        if self.num_gpus:
            kwargs["num_gpus"] = self.num_gpus
        return kwargs


class Stage:
    """Base class. Subclasses set ``name``, columns and resources and implement
    ``process_row`` (simple) or ``process_batch`` (vectorised / model calls)."""

    name: ClassVar[str] = "stage"
    input_columns: tuple[str, ...] = ()
    output_columns: tuple[str, ...] = ()
    # Arrow types of output columns ("int64", "float64", "string", "bool", ...): the
    # writer casts every shard to them, so a shard whose rows all failed or lack a
    # value still has the table's one schema. Undeclared all-null columns become string.
    output_types: dict[str, str] = {}
    resources: Resources = Resources()

    def setup(self) -> None:
        """Load models/clients. Called once per worker before the first batch."""

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def process_batch(self, batch: pd.DataFrame) -> pd.DataFrame:
        """Default: ``process_row`` on each row. Must return one output row per input
        row, in order; may set ``_error`` on rows it could not process."""
        outputs = [self._row_or_error(r) for r in batch.to_dict("records")]
        return frame_keeping_types(outputs, batch.index)

    def _row_or_error(self, row: dict[str, Any]) -> dict[str, Any]:
        try:
            return {**row, **self.process_row(row)}
        except Exception as exc:  # noqa: BLE001 - every failure becomes a row error
            return mark_error(row, self.name, exc)

    def preflight(self) -> None:
        """Cheap checks on the driver before anything runs (missing keys, bad names)."""

    def describe(self) -> dict[str, Any]:
        """What the manifest records about this stage (model ids, prompt versions)."""
        return {"name": self.name}

    def apply(self, ds):
        """Add this stage to a Ray Dataset. Stages backed by ``ray.data.llm`` override."""
        return ds.map_batches(
            StageWorker,
            fn_constructor_args=(self,),
            batch_format="pandas",
            **self.resources.map_batches_kwargs(),
        )


def has_error(value: Any) -> bool:
    """An ``_error`` cell that is set (None and NaN both mean "no error")."""
    return value is not None and value == value


def keep_int_types(frame: pd.DataFrame) -> pd.DataFrame:
    """Integer and bool columns as pandas nullable types, so concatenating rows that
    lack them (failed rows) leaves gaps instead of turning int64 labels into float64."""
    conv = {c: ("boolean" if pd.api.types.is_bool_dtype(t) else "Int64")
            for c, t in frame.dtypes.items()
            if not isinstance(t, pd.api.extensions.ExtensionDtype)
            and (pd.api.types.is_integer_dtype(t) or pd.api.types.is_bool_dtype(t))}
    return frame.astype(conv) if conv else frame


def frame_keeping_types(rows: list[dict[str, Any]], index) -> pd.DataFrame:
    """DataFrame of per-row outputs in order; finished rows' column types are kept
    even when some rows failed (see ``keep_int_types``)."""
    failed = [i for i, r in enumerate(rows) if has_error(r.get(ERROR_COL))]
    if not failed:
        return pd.DataFrame(rows, index=index)
    bad = set(failed)
    ok_pos = [i for i in range(len(rows)) if i not in bad]
    parts = [pd.DataFrame([rows[i] for i in failed], index=failed)]
    if ok_pos:
        parts.insert(0, keep_int_types(pd.DataFrame([rows[i] for i in ok_pos], index=ok_pos)))
    out = pd.concat(parts).sort_index()
    out.index = index
    return out


def arrow_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Missing values of text (``str`` / object) columns as None. pandas 3 hands Ray blocks
    over as ``str`` columns whose missing values are NaN; Ray 2.60 cannot convert a text
    column holding NaN to Arrow, falls back to pickled Python objects, and the writer then
    fails to index the block (seen with Open-i: reports without a findings section)."""
    fixed = None
    for col in frame.columns:
        values = frame[col]
        if (values.dtype == object or isinstance(values.dtype, pd.StringDtype)) \
                and values.isna().any():
            if fixed is None:
                fixed = frame.copy()
            fixed[col] = values.astype(object).where(values.notna(), None)
    return frame if fixed is None else fixed


def mark_error(row: dict[str, Any], stage: str, exc: BaseException | str) -> dict[str, Any]:
    if isinstance(exc, BaseException):
        message = str(exc) or exc.__class__.__name__
        kind = exc.__class__.__name__
        if not isinstance(exc, RowError):
            # Unexpected failures keep the last frame so the error table is actionable.
            tb = traceback.extract_tb(exc.__traceback__)
            if tb:
                frame = tb[-1]
                message = f"{message} (at {frame.filename}:{frame.lineno})"
    else:
        message, kind = str(exc), "RowError"
    return {**row, ERROR_COL: message, ERROR_STAGE_COL: stage, ERROR_TYPE_COL: kind}


def check_columns(stage: Stage, batch: pd.DataFrame) -> None:
    missing = [c for c in stage.input_columns if c not in batch.columns]
    if missing:
        raise KeyError(
            f"stage {stage.name!r} needs columns {missing}; the dataset has {sorted(batch.columns)}"
        )


class StageWorker:
    """The Ray actor that hosts one stage instance."""

    def __init__(self, stage: Stage):
        self.stage = stage
        self.stage.setup()

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        check_columns(self.stage, batch)
        if ERROR_COL not in batch.columns:
            batch = batch.assign(**{ERROR_COL: None, ERROR_STAGE_COL: None, ERROR_TYPE_COL: None})
        batch = batch.reset_index(drop=True)
        failed = batch[ERROR_COL].notna()
        todo = batch[~failed]
        if todo.empty:
            return arrow_safe(batch)
        done = self._process(todo)
        out = pd.concat([keep_int_types(done), batch[failed]]) if failed.any() else done
        return arrow_safe(out.reset_index(drop=True))

    def _process(self, todo: pd.DataFrame) -> pd.DataFrame:
        try:
            out = self.stage.process_batch(todo)
            if len(out) != len(todo):
                raise RuntimeError(
                    f"stage {self.stage.name!r} returned {len(out)} rows for {len(todo)}"
                )
            return out
        except Exception:  # noqa: BLE001 - isolate the failing row(s)
            log.warning("stage %s: batch failed, retrying %d rows one by one",
                        self.stage.name, len(todo))
            rows = []
            for i in range(len(todo)):
                one = todo.iloc[i:i + 1]
                try:
                    rows.append(keep_int_types(self.stage.process_batch(one)))
                except Exception as exc:  # noqa: BLE001
                    rows.append(pd.DataFrame([mark_error(one.iloc[0].to_dict(), self.stage.name, exc)]))
            return pd.concat(rows, ignore_index=True)
