"""Where a run's outputs live, and the worker-side Parquet writer.

Layout under the output root (local path or ``s3://`` / ``gs://`` URI)::

    results/part-<digest>.parquet   finished rows
    errors/part-<digest>.parquet    failed rows: keys, stage, error, attempt, input row
    manifest.json

File names are a digest of the row keys they hold, so rewriting the same shard
replaces the same file, and files are written to a temporary name then moved so
a killed worker never leaves half a Parquet file that resume would trust.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from ctray.io.columns import (ATTEMPT_COL, ERROR_COL, ERROR_STAGE_COL, ERROR_TYPE_COL,
                                  INPUT_COLS_COL, INTERNAL_COLS)

log = logging.getLogger(__name__)
RUN_ID_COL = "run_id"
USAGE_COLS = ("prompt_tokens", "completion_tokens", "llm_calls")
INPUT_COLS_SEP = "\x1f"


def resolve_fs(uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    from pathlib import Path

    return pafs.LocalFileSystem(), str(Path(uri).resolve())


@dataclass(frozen=True)
class OutputLayout:
    root: str

    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    @property
    def results(self) -> str:
        return self.path("results")

    @property
    def errors(self) -> str:
        return self.path("errors")

    @property
    def manifest(self) -> str:
        return self.path("manifest.json")

    def parquet_files(self, which: str) -> list[str]:
        """Full URIs of the finished Parquet files of ``results`` or ``errors``."""
        filesystem, base = resolve_fs(self.path(which))
        info = filesystem.get_file_info(pafs.FileSelector(base, allow_not_found=True))
        prefix = self.path(which)
        return sorted(f"{prefix}/{i.base_name}" for i in info
                      if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")
                      and not i.base_name.startswith("."))

    def row_count(self, which: str) -> int:
        total = 0
        for uri in self.parquet_files(which):
            filesystem, path = resolve_fs(uri)
            with filesystem.open_input_file(path) as f:
                total += pq.ParquetFile(f).metadata.num_rows
        return total

    def read_json(self) -> dict[str, Any] | None:
        filesystem, path = resolve_fs(self.manifest)
        if filesystem.get_file_info(path).type != pafs.FileType.File:
            return None
        with filesystem.open_input_stream(path) as f:
            return json.loads(f.read().decode("utf-8"))

    def write_json(self, payload: dict[str, Any]) -> None:
        write_bytes_atomic(self.manifest, json.dumps(payload, indent=2, ensure_ascii=False,
                                                     default=str).encode("utf-8"))


def read_output_table(path: str, kind: str, columns: list[str] | None = None,
                      allow_empty: bool = False,
                      text_columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """A job output folder's ``results`` Parquet files (only ``columns`` that exist,
    when given), or one CSV/Parquet file; ``kind`` names the folder in errors.
    ``text_columns`` of a CSV are read as written (ids: "0012" is not 12)."""
    from ctray.errors import UserError

    try:
        return _read_output_table(path, kind, columns, allow_empty, text_columns)
    except UserError:
        raise
    except (OSError, ValueError, pa.ArrowException) as exc:
        # An empty, truncated or unreadable file: one line naming it, not a traceback.
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path}: not a readable {kind}, .csv or .parquet file ({reason})") from None


def _read_output_table(path, kind, columns, allow_empty, text_columns) -> pd.DataFrame:
    from ctray.errors import UserError

    root = path.rstrip("/")
    filesystem, base = resolve_fs(root + "/results")
    if filesystem.get_file_info(base).type == pafs.FileType.Directory:
        frames = []
        for uri in OutputLayout(root).parquet_files("results"):
            fs_, p = resolve_fs(uri)
            with fs_.open_input_file(p) as f:
                pf = pq.ParquetFile(f)
                names = pf.schema_arrow.names
                frames.append(pf.read(columns=[c for c in (columns or names) if c in names])
                              .to_pandas())
        if not frames:
            if allow_empty:
                return pd.DataFrame()
            raise UserError(f"{path}: the results folder holds no Parquet file")
        return pd.concat(frames, ignore_index=True)
    if root.endswith(".parquet"):
        return pd.read_parquet(root)
    if root.endswith(".csv"):
        return pd.read_csv(root, dtype={c: str for c in text_columns})
    raise UserError(f"{path}: not a {kind}, .csv or .parquet file")


def write_bytes_atomic(uri: str, data: bytes) -> None:
    filesystem, path = resolve_fs(uri)
    parent = path.rsplit("/", 1)[0]
    filesystem.create_dir(parent, recursive=True)
    tmp = f"{parent}/.tmp-{path.rsplit('/', 1)[1]}-{time.time_ns()}"
    with filesystem.open_output_stream(tmp) as f:
        f.write(data)
    filesystem.move(tmp, path)


def shard_digest(keys: pd.DataFrame) -> str:
    h = hashlib.sha1()
    for values in sorted(map(tuple, keys.astype(str).itertuples(index=False))):
        h.update("\x1f".join(values).encode("utf-8"))
        h.update(b"\x1e")
    return h.hexdigest()[:20]


def _write_table(df: pd.DataFrame | pa.Table, directory_uri: str, key_columns: list[str],
                 suffix: str = "", types: dict[str, str] | None = None) -> str:
    keys = df[key_columns] if isinstance(df, pd.DataFrame) else df.select(key_columns).to_pandas()
    name = f"part-{shard_digest(keys)}{suffix}.parquet"
    table = df if isinstance(df, pa.Table) else pa.Table.from_pandas(
        df.reset_index(drop=True), preserve_index=False)
    table = conform(table, types or {})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    uri = f"{directory_uri}/{name}"
    write_bytes_atomic(uri, sink.getvalue().to_pybytes())
    return uri


def conform(table: pa.Table, types: dict[str, str]) -> pa.Table:
    """One schema per output table: declared columns cast to their declared Arrow type,
    and a column with no value in this shard (Arrow ``null`` type) written as string,
    so no shard's schema depends on which rows happened to land in it."""
    fields = []
    for f in table.schema:
        if f.name in types:
            fields.append(pa.field(f.name, pa.type_for_alias(types[f.name])))
        elif pa.types.is_null(f.type) or pa.types.is_large_string(f.type):
            # large_string comes from Arrow blocks, string from pandas: one spelling.
            fields.append(pa.field(f.name, pa.string()))
        elif pa.types.is_large_binary(f.type):
            fields.append(pa.field(f.name, pa.binary()))
        else:
            fields.append(f)
    target = pa.schema(fields)
    return table if target.equals(table.schema) else table.cast(target)


ERRORS_SCHEMA = {"stage": "string", "error": "string", "error_type": "string",
                 "attempt": "int64", "input_json": "string", "llm_raw": "string",
                 RUN_ID_COL: "string"}


def strict_json(record: dict[str, Any]) -> str:
    """JSON a strict parser accepts: NaN/inf and pandas' missing markers become null,
    numpy scalars plain numbers, anything else its string form."""
    return json.dumps({k: _json_value(v) for k, v in record.items()}, ensure_ascii=False,
                      allow_nan=False, default=str)


def _json_value(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return _json_value(value.tolist())  # numpy scalars and arrays
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    return value


def error_records(failed: pd.DataFrame, key_columns: list[str]) -> pd.DataFrame:
    """Errors table rows: keys, where and why it failed, the attempt and the input row
    (serialized here, for failed rows only, from the columns the row entered with)."""
    keep = [c for c in ("llm_raw", RUN_ID_COL) if c in failed.columns]
    out = failed[key_columns + keep].copy()
    out["stage"] = failed[ERROR_STAGE_COL].astype(str)
    out["error"] = failed[ERROR_COL].astype(str)
    out["error_type"] = failed[ERROR_TYPE_COL].astype(str) if ERROR_TYPE_COL in failed else ""
    out["attempt"] = failed[ATTEMPT_COL].astype(int) if ATTEMPT_COL in failed else 1
    if INPUT_COLS_COL in failed:
        dumped = []
        for names, record in zip(failed[INPUT_COLS_COL].astype(str),
                                 failed.to_dict("records")):
            dumped.append(strict_json({c: record.get(c) for c in names.split(INPUT_COLS_SEP)
                                       if c}))
        out["input_json"] = dumped
    else:
        out["input_json"] = None
    return out


def write_shard(batch: pd.DataFrame, layout: OutputLayout, key_columns: list[str],
                run_id: str, drop_columns: list[str] | None = None,
                types: dict[str, str] | None = None) -> pd.DataFrame:
    """Ray Data map_batches UDF: write finished and failed rows, return only counts."""
    batch = batch.reset_index(drop=True).assign(**{RUN_ID_COL: run_id})
    if ERROR_COL in batch.columns:
        bad = batch[ERROR_COL].notna().to_numpy()
    else:
        bad = np.zeros(len(batch), dtype=bool)
    ok, failed = batch[~bad], batch[bad]
    summary: dict[str, Any] = {"ok": len(ok), "failed": len(failed)}
    for col in USAGE_COLS:
        summary[col] = int(pd.to_numeric(batch[col], errors="coerce").fillna(0).sum()) if col in batch else 0
    if len(ok):
        drop = [c for c in (*INTERNAL_COLS, *(drop_columns or [])) if c in ok.columns]
        _write_table(ok.drop(columns=drop), layout.results, key_columns, types=types)
    if len(failed):
        records = error_records(failed, key_columns)
        # Each attempt keeps its own file: the history of failures is never overwritten.
        _write_table(records, layout.errors, key_columns, f"-attempt{int(records['attempt'].max())}",
                     types={k: v for k, v in ERRORS_SCHEMA.items() if k in records.columns})
        stages = failed[ERROR_STAGE_COL].value_counts().to_dict()
        summary["failed_by_stage"] = json.dumps(stages)
    else:
        summary["failed_by_stage"] = "{}"
    # Counts only: never report text in logs.
    log.info("ctray: wrote %d finished and %d failed rows", len(ok), len(failed))
    return pd.DataFrame([summary])
