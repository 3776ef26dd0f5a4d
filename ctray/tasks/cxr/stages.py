"""The rule labeler of label-cxr as a pipeline stage."""

from __future__ import annotations

from importlib import resources
from typing import Any

from ctray.errors import UserError
from ctray.pipeline.stage import Resources, RowError, Stage
from ctray.tasks.cxr.schema import EVIDENCE_COLUMNS, OBSERVATIONS

FLOAT_TYPES = {o: "float64" for o in OBSERVATIONS}
#: encoder windows per report (>1: longer than the encoder's window)
WINDOWS_COL = "n_windows"


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


class CxrEncoderStage(Stage):
    """The trained encoder labeler (``CXREncoderLabeler``), one model per actor."""

    name = "encoder_cxr"

    def __init__(self, model_path: str, text_column: str = "text", device: str | None = None,
                 batch_size: int = 32, resources: Resources | None = None,
                 cache_entries: int = 100_000, torch_threads: int | None = None,
                 dtype: str = "auto"):
        self.model_path = model_path
        self.dtype = dtype
        self.cache_entries = cache_entries
        self.torch_threads = torch_threads
        self.text_column = text_column
        self.device = device
        self.batch_size = batch_size
        self.input_columns = ("report_id", text_column)
        self.output_columns = OBSERVATIONS + (WINDOWS_COL,)
        self.output_types = {**FLOAT_TYPES, WINDOWS_COL: "int64"}
        self.resources = resources or Resources(num_cpus=1, batch_size=64)
        self.labeler = None

    def preflight(self) -> None:
        from pathlib import Path

        from ctray.tasks.cxr.encoder_model import META_FILE

        if "://" not in self.model_path and not (Path(self.model_path) / META_FILE).is_file():
            raise UserError(f"{self.model_path}: not a CXR encoder labeler folder (no {META_FILE}); "
                            "train one with ctray train-cxr-encoder and set encoder.model")

    def setup(self) -> None:
        from ctray.tasks.cxr.encoder_model import CXREncoderLabeler

        if self.torch_threads:
            import torch

            torch.set_num_threads(self.torch_threads)
        self.labeler = CXREncoderLabeler.load(self.model_path, device=self.device,
                                              batch_size=self.batch_size,
                                              cache_entries=self.cache_entries,
                                              dtype=self.dtype)

    def process_batch(self, batch):
        import pandas as pd

        from ctray.pipeline.stage import mark_error

        rows = batch.to_dict("records")
        good, out = [], [None] * len(rows)
        for i, row in enumerate(rows):
            text = row.get(self.text_column)
            if isinstance(text, str) and text.strip():
                good.append(i)
            else:
                out[i] = mark_error(row, self.name, RowError(
                    f"row {row.get('report_id')!r}: field {self.text_column!r} is empty"))
        if good:
            values = self.labeler.predict_values([rows[i][self.text_column] for i in good])
            windows = self.labeler.last_windows
            for k, i in enumerate(good):
                out[i] = {**rows[i], **dict(zip(OBSERVATIONS, values[k].tolist())),
                          WINDOWS_COL: int(windows[k])}
        return pd.DataFrame(out, index=batch.index)

    def describe(self) -> dict[str, Any]:
        from ctray.tasks.cxr.encoder_model import inference_dtype

        # Labels may differ between dtypes, so the run records the one it computes in
        # (resolved on the driver for CPU actors; a GPU actor resolves "auto" itself).
        device = self.device or ("cuda" if self.resources.num_gpus else "cpu")
        dtype = self.dtype if device.startswith("cuda") else inference_dtype(self.dtype, device)
        return {"name": self.name, "model": self.model_path, "dtype": dtype}
