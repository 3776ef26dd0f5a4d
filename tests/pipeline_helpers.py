"""Stages used by the pipeline tests (importable by Ray workers)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ctray.pipeline.stage import Resources, RowError, Stage


class CountingLength(Stage):
    """Adds ``n_chars``; records every row it processes as a file in ``log_dir`` so a
    test can prove which rows were computed, and fails on ids listed in ``fail_ids``."""

    name = "counting_length"
    input_columns = ("report_id", "text")
    output_columns = ("n_chars",)

    def __init__(self, log_dir: str, fail_ids=(), delay_s: float = 0.0, batch_size: int = 4):
        self.log_dir = log_dir
        self.fail_ids = set(fail_ids)
        self.delay_s = delay_s
        self.resources = Resources(batch_size=batch_size)

    def process_row(self, row):
        Path(self.log_dir).mkdir(parents=True, exist_ok=True)
        marker = Path(self.log_dir) / f"{row['report_id']}.{os.getpid()}.{time.time_ns()}"
        marker.touch()
        if self.delay_s:
            time.sleep(self.delay_s)
        if row["report_id"] in self.fail_ids or (Path(self.log_dir) / f"FAIL-{row['report_id']}").exists():
            raise RowError(f"row {row['report_id']!r}: simulated failure")
        return {"n_chars": len(row["text"])}


def processed_ids(log_dir: str) -> list[str]:
    return [p.name.split(".")[0] for p in Path(log_dir).iterdir() if not p.name.startswith("FAIL-")]


class BatchOrder(Stage):
    """Numbers the batches one actor runs (``batch_seq``), to show the order it ran them."""

    name = "batch_order"
    input_columns = ("report_id",)
    output_columns = ("batch_seq",)
    output_types = {"batch_seq": "int64"}

    def __init__(self, in_order: bool):
        self.resources = Resources(batch_size=2, in_order=in_order)

    def setup(self) -> None:
        self.batches = 0

    def process_batch(self, batch):
        self.batches += 1
        return batch.assign(batch_seq=self.batches)
