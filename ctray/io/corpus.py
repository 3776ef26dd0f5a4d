"""Report corpora → Ray Dataset rows keyed by a stable ``report_id``.

Readers cover CT-RATE-style CSVs and any other layout (configurable id / text /
section columns), JSONL, Parquet, and folders of ``.txt`` files, on local disk or
``s3://`` / ``gs://``. Text columns are read as raw bytes and decoded per row, so a
report with invalid UTF-8 becomes one row error naming the row and field instead
of an unreadable file.

Ids are kept as written in every format (see :func:`id_text`): no reader infers types
for them. CSV ids are read as bytes, JSONL lines are parsed one by one with numbers
kept as their source text (``0012`` stays ``"0012"``, ``12`` is ``"12"``, never
``12.0``), and Parquet integer ids become their decimal text (a null among them does
not turn the column into floats). A missing id, or an id that is not a string or a
number (a list, an object, a boolean), is a row error; so is a text field that is not
text (a number or a list in the report column).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from ctray.errors import UserError
from ctray.io.columns import LIGHT_TASK, ERROR_COL, ERROR_STAGE_COL, ERROR_TYPE_COL

CT_RATE_SECTIONS = {
    "clinical_information": "ClinicalInformation_EN",
    "technique": "Technique_EN",
    "findings": "Findings_EN",
    "impressions": "Impressions_EN",
}
log = logging.getLogger(__name__)
SOURCE_COL = "source_file"
TEXT_COL = "text"
ID_COL = "report_id"
READ_STAGE = "read"


class CorpusError(UserError, ValueError):
    """The corpus cannot be read as configured (names the file and field)."""


class CorpusConfig(BaseModel):
    """The reports a job reads: where, in which layout (columns, sections), how many."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="file, folder, glob or s3:// / gs:// URI")
    format: Literal["auto", "csv", "jsonl", "parquet", "txt"] = Field(
        "auto", description="file format; auto: from the path's suffix or the folder's files")
    id_column: str | None = Field(
        "VolumeName", description="column holding the report id (None: ids from file name and "
        "row number)")
    # Sections: output name -> source column. The CT-RATE layout is the default.
    sections: dict[str, str] = Field(
        default_factory=lambda: dict(CT_RATE_SECTIONS), description="output section name -> "
        "source column (default: the CT-RATE layout)")
    # Sections joined (with headers) into the `text` column; empty = all sections.
    text_sections: list[str] = Field(
        default_factory=lambda: ["findings", "impressions"], description="sections joined (with "
        "headers) into the text column; empty: all")
    # A single text column instead of sections (e.g. a JSONL corpus with "report").
    text_column: str | None = Field(
        None, description="one text column instead of sections (e.g. a JSONL 'report')")
    # Extra columns carried through to outputs (e.g. gold labels).
    keep_columns: list[str] = Field(
        default_factory=list, description="extra input columns carried through to the outputs "
        "(e.g. gold labels)")
    limit: int | None = Field(None, ge=0, description="read only the first N reports (None: all)")
    check_duplicate_ids: bool = Field(
        True, description="refuse a corpus whose ids repeat (resume keys on them)")

    def source_columns(self) -> list[str]:
        cols = [self.text_column] if self.text_column else list(self.sections.values())
        return cols

    def resolved_format(self) -> str:
        if self.format != "auto":
            return self.format
        p = self.path.rstrip("/").lower()
        for suffix, fmt in ((".csv", "csv"), (".jsonl", "jsonl"), (".json", "jsonl"),
                            (".parquet", "parquet"), (".txt", "txt")):
            if p.endswith(suffix):
                return fmt
        if "://" not in p and Path(self.path).is_dir():
            names = {f.suffix for f in Path(self.path).iterdir()}
            for suffix, fmt in ((".csv", "csv"), (".jsonl", "jsonl"),
                                (".parquet", "parquet"), (".txt", "txt")):
                if suffix in names:
                    return fmt
        raise CorpusError(f"{self.path}: cannot tell the corpus format; set corpus.format")


def _check_exists(path: str) -> None:
    if "://" in path:
        return  # remote existence is checked by the reader with a clearer error
    import glob

    if not Path(path).exists() and not glob.glob(path):
        raise CorpusError(f"{path}: no such file or folder")


def read_corpus(cfg: CorpusConfig):
    """Build the Dataset lazily; nothing executes until the job consumes it."""
    _check_exists(cfg.path)
    fmt = cfg.resolved_format()
    wanted = cfg.source_columns() + ([cfg.id_column] if cfg.id_column else []) + cfg.keep_columns
    from ctray.io.preflight import check_corpus_files

    # Bad files fail here, on the driver, before anything runs or is written.
    ids_checked = check_corpus_files(cfg, fmt, wanted)
    ds = _read(cfg, fmt, wanted)
    if ids_checked:
        # The runner skips its cluster-side duplicate-id pass for this Dataset.
        ds._ctray_unique_keys = (ID_COL,)
    return ds


def _read(cfg: CorpusConfig, fmt: str, wanted: list[str]):
    import ray

    if fmt == "csv":
        import pyarrow as pa
        from pyarrow import csv as pacsv

        # Bytes, not strings: decoding per row isolates invalid UTF-8 to one row (the
        # id column too: one bad byte must not turn every id into a bytes repr).
        binary = cfg.source_columns() + ([cfg.id_column] if cfg.id_column else [])
        convert = pacsv.ConvertOptions(column_types={c: pa.binary() for c in binary})
        # Reports are multi-line: a quoted field may hold newlines.
        ds = ray.data.read_csv(cfg.path, convert_options=convert, include_paths=True,
                               parse_options=pacsv.ParseOptions(newlines_in_values=True),
                               **LIGHT_TASK)
    elif fmt == "jsonl":
        # Not read_json: its pandas/arrow type inference rewrites ids ("0012" -> 12.0).
        ds = ray.data.read_binary_files(cfg.path, include_paths=True, **LIGHT_TASK)
        ds = ds.map_batches(_jsonl_rows, fn_kwargs={"cfg": cfg, "wanted": wanted},
                            batch_format="pyarrow", batch_size=1, **LIGHT_TASK)
        return _finish(ds, cfg)
    elif fmt == "parquet":
        ds = ray.data.read_parquet(cfg.path, include_paths=True, **LIGHT_TASK)
    elif fmt == "txt":
        ds = ray.data.read_binary_files(cfg.path, include_paths=True, **LIGHT_TASK)
        ds = ds.map_batches(_txt_rows, batch_format="pandas", **LIGHT_TASK)
        return _finish(ds, cfg)
    else:  # pragma: no cover - guarded by the Literal type
        raise CorpusError(f"unknown corpus format {fmt!r}")
    # Arrow batches, read with to_pylist: pandas would turn an int id column with a
    # null into floats (3 -> "3.0").
    ds = ds.map_batches(_normalize_batch, fn_kwargs={"cfg": cfg, "wanted": wanted},
                        batch_format="pyarrow", batch_size=1024, **LIGHT_TASK)
    return _finish(ds, cfg)


def _finish(ds, cfg: CorpusConfig):
    if cfg.limit is not None:
        ds = ds.limit(cfg.limit)
    return ds


def _txt_rows(batch: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for path, data in zip(batch["path"], batch["bytes"]):
        row: dict[str, Any] = {ID_COL: Path(path).stem, SOURCE_COL: path,
                               ERROR_COL: None, ERROR_STAGE_COL: None, ERROR_TYPE_COL: None}
        try:
            row[TEXT_COL] = data.decode("utf-8")
            if not row[TEXT_COL].strip():
                raise CorpusError(f"{path}: empty report")
        except (UnicodeDecodeError, CorpusError) as exc:
            row[TEXT_COL] = None
            row.update(_error_fields(f"{path}: {_describe(exc)}"))
        rows.append(row)
    return pd.DataFrame(rows)


def _describe(exc: Exception) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return f"not valid UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"
    return str(exc)


def _error_fields(message: str) -> dict[str, Any]:
    return {ERROR_COL: message, ERROR_STAGE_COL: READ_STAGE, ERROR_TYPE_COL: "CorpusError"}


def _normalize_batch(batch, cfg: "CorpusConfig", wanted: list[str]) -> pd.DataFrame:
    return _Normalize(cfg, wanted)(batch)


class JsonNumber(str):
    """A JSON number kept as its source text (``parse_int``/``parse_float`` hook)."""

    def value(self) -> int | float:
        return json.loads(self)


def parse_jsonl_line(line: bytes) -> tuple[Any, str | None]:
    """(parsed line, problem): numbers stay :class:`JsonNumber`; invalid UTF-8 is decoded
    with backslash escapes and named as the problem (a row error, like CSV's)."""
    try:
        return json.loads(line.decode("utf-8"), parse_int=JsonNumber,
                          parse_float=JsonNumber), None
    except UnicodeDecodeError as exc:
        problem = _describe(exc)
    # Parsed with the bad bytes kept aside (surrogateescape: a backslash escape here would
    # be an invalid JSON escape), then spelled with backslash escapes like CSV's.
    raw = json.loads(line.decode("utf-8", "surrogateescape"), parse_int=JsonNumber,
                     parse_float=JsonNumber)
    return _escape_bad_bytes(raw), problem


def _escape_bad_bytes(value: Any) -> Any:
    if isinstance(value, JsonNumber):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if isinstance(value, list):
        return [_escape_bad_bytes(v) for v in value]
    if isinstance(value, dict):
        return {_escape_bad_bytes(k): _escape_bad_bytes(v) for k, v in value.items()}
    return value


def jsonl_lines(data: bytes):
    """(line number from 1, line bytes) of the non-blank lines; a UTF-8 BOM is dropped."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    for number, line in enumerate(data.split(b"\n"), start=1):
        if line.strip():
            yield number, line


def jsonl_objects(path: str, data: bytes):
    """``(line number, object, problem)`` for every line of a JSONL file; a line that is
    not a JSON object stops with the file and line named."""
    for number, line in jsonl_lines(data):
        try:
            raw, problem = parse_jsonl_line(line)
        except ValueError as exc:
            raise CorpusError(f"{path}: line {number} is not valid JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise CorpusError(f"{path}: line {number} is not a JSON object "
                              f"(got {type(raw).__name__})")
        yield number, raw, problem


def _jsonl_rows(batch, cfg: "CorpusConfig", wanted: list[str]) -> pd.DataFrame:
    """One file (a binary-files row) -> its normalized rows; a line that is not a JSON
    object names the file and line (the driver-side preflight does the same for local
    files before anything runs)."""
    normalize = _Normalize(cfg, wanted)
    rows = []
    for path, data in zip(batch.column("path").to_pylist(), batch.column("bytes").to_pylist()):
        for number, raw, problem in jsonl_objects(path, data):
            raw["path"] = path
            rows.append(normalize._row(raw, [f"line {number} {problem}"] if problem else []))
    return pd.DataFrame(rows, columns=normalize.columns())


def stable_id(text: str) -> str:
    """Content-derived id for corpora without an id column: same text → same id."""
    return "h" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


class _Normalize:
    """Validate and decode raw rows into (report_id, sections..., text)."""

    def __init__(self, cfg: CorpusConfig, wanted: list[str]):
        self.cfg = cfg
        self.wanted = wanted

    def columns(self) -> list[str]:
        sections = [TEXT_COL] if self.cfg.text_column else [*self.cfg.sections, TEXT_COL]
        return [SOURCE_COL, ERROR_COL, ERROR_STAGE_COL, ERROR_TYPE_COL, *sections, ID_COL,
                *self.cfg.keep_columns]

    def __call__(self, batch) -> pd.DataFrame:
        names = list(batch.column_names) if hasattr(batch, "column_names") else list(batch.columns)
        records = batch.to_pylist() if hasattr(batch, "to_pylist") else batch.to_dict("records")
        path = records[0].get("path", self.cfg.path) if records else self.cfg.path
        missing = [c for c in self.wanted if c not in names]
        if missing:
            raise CorpusError(
                f"{path}: missing column(s) {missing}; the file has {sorted(c for c in names if c != 'path')}"
            )
        return pd.DataFrame([self._row(r) for r in records], columns=self.columns())

    def _row(self, raw: dict[str, Any], problems: list[str] | None = None) -> dict[str, Any]:
        cfg = self.cfg
        path = raw.get("path", cfg.path)
        row: dict[str, Any] = {SOURCE_COL: path, ERROR_COL: None, ERROR_STAGE_COL: None,
                               ERROR_TYPE_COL: None}
        problems = list(problems or [])
        if cfg.text_column:
            sections = {TEXT_COL: cfg.text_column}
        else:
            sections = cfg.sections
        for name, column in sections.items():
            value = raw.get(column)
            if isinstance(value, bytes):
                try:
                    value = value.decode("utf-8")
                except UnicodeDecodeError as exc:
                    problems.append(f"field {column!r} {_describe(exc)}")
                    value = None
            if value is None or (isinstance(value, float) and pd.isna(value)):
                value = None
            elif isinstance(value, JsonNumber) or not isinstance(value, str):
                # A number or a list where report text belongs: not text to label.
                problems.append(f"field {column!r} is not text (a {_kind(value)})")
                value = None
            row[name] = value
        if not cfg.text_column:
            chosen = cfg.text_sections or list(cfg.sections)
            parts = [row[s].strip() for s in chosen if row.get(s) and row[s].strip()]
            row[TEXT_COL] = "\n\n".join(parts) if parts else None
        if not problems and not (row[TEXT_COL] or "").strip():
            fields = [cfg.text_column] if cfg.text_column else [cfg.sections[s] for s in (cfg.text_sections or cfg.sections)]
            problems.append(f"empty report text in field(s) {fields}")
        if cfg.id_column:
            rid, problem = id_text(raw.get(cfg.id_column))
            if problem:
                problems.append(f"field {cfg.id_column!r} {problem}")
            if not rid:
                # Still a stable key (resume and --retry-failed need one).
                rid = stable_id(json.dumps({k: row.get(k) for k in sections}, ensure_ascii=False))
            row[ID_COL] = rid
        else:
            row[ID_COL] = stable_id(row[TEXT_COL] or json.dumps(str(raw)))
        for col in cfg.keep_columns:
            value = raw.get(col)
            row[col] = value.value() if isinstance(value, JsonNumber) else value
        if problems:
            row.update(_error_fields(f"{path}: row {row[ID_COL]!r}: " + "; ".join(problems)))
        return row


def _kind(value: Any) -> str:
    if isinstance(value, JsonNumber):
        return "number"
    return {bool: "boolean", int: "number", float: "number", list: "list",
            dict: "object"}.get(type(value), type(value).__name__)


def id_text(value: Any) -> tuple[str | None, str | None]:
    """(the id as written, problem or None). Strings are stripped of surrounding
    whitespace only; integers become their decimal text (an integral float, which a
    Parquet writer makes of an int column with nulls, too); a JSON number keeps its
    source text. Missing, empty, boolean, list or object ids are problems (row errors)."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            # Backslash escapes keep the key readable and stable.
            return value.decode("utf-8", "backslashreplace").strip(), _describe(exc)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None, "is empty"
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return (json.dumps(value, ensure_ascii=False, default=str),
                f"is a {_kind(value)}, not a string or number")
    if isinstance(value, float):
        value = str(int(value)) if value.is_integer() else repr(value)
    text = str(value).strip()
    return (text, None) if text else (None, "is empty")


def explode_sections(batch: pd.DataFrame, sections: list[str]) -> pd.DataFrame:
    """One row per (report_id, section) for section-wise tasks such as translation."""
    frames = []
    for s in sections:
        if s not in batch.columns:
            raise CorpusError(f"section {s!r} is not in the corpus rows; configured sections: "
                              f"{[c for c in batch.columns if not c.startswith('_')]}")
        part = batch.drop(columns=[c for c in sections if c != s] + [TEXT_COL], errors="ignore")
        part = part.rename(columns={s: "source_text"}).assign(section=s)
        frames.append(part)
    out = pd.concat(frames, ignore_index=True)
    return out[out["source_text"].notna() & (out["source_text"].fillna("").str.strip() != "")]


def find_duplicate_ids(ds, key_columns=(ID_COL,), limit: int = 5) -> list[dict[str, Any]]:
    """Ids occurring more than once (aggregated on the cluster, only offenders return).

    One hash partition per cluster CPU, not Ray Data's default of 200: each partition is a
    1-CPU reduce task, and on a small cluster (a 4-CPU test cluster, a laptop) 200 of them
    for a few hundred ids held the job for minutes before its first row was processed."""
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 1)) if ray.is_initialized() else 1
    counts = ds.groupby(list(key_columns), num_partitions=max(1, min(cpus, 200))).count()
    return counts.filter(lambda r: r["count()"] > 1).take(limit)
