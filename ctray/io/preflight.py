"""Driver-side checks of local corpus files before a job starts.

A bad file must end in one ``ctray:`` line naming the file (and row or column) with
nothing written, not in a traceback from a Ray read task after some shards were
already written. For local CSV and Parquet files this module also checks that ids
are unique, reading only the id column (pyarrow, multi-threaded), which replaces
the runner's cluster-side groupby: that pass cost seconds of start-up per job.
Local JSONL files are parsed line by line here too (a malformed line is named by its
line number before Ray reads anything). Remote corpora (``s3://``, ``gs://``) keep the
runner's groupby.
"""

from __future__ import annotations

import csv
import glob
import io
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from ctray.io.corpus import CorpusConfig

SUFFIXES = {"csv": (".csv",), "parquet": (".parquet",), "jsonl": (".jsonl", ".json"),
            "txt": (".txt",)}
SHOWN = 5


def local_files(path: str, fmt: str) -> list[str] | None:
    """The local files a reader will see, or None for remote paths."""
    if "://" in path:
        return None
    p = Path(path)
    if p.is_dir():
        return sorted(str(f) for f in p.iterdir()
                      if f.is_file() and f.suffix.lower() in SUFFIXES.get(fmt, ())
                      and not f.name.startswith("."))
    if p.is_file():
        return [str(p)]
    return sorted(f for f in glob.glob(path) if Path(f).is_file())


def check_corpus_files(cfg: "CorpusConfig", fmt: str, wanted: list[str]) -> bool:
    """Raise CorpusError for an empty (0-byte) file, a missing column, a malformed CSV
    row or duplicate ids; warn about a file with a header and no rows. True when ids
    were checked here (the runner may then skip its own duplicate pass)."""
    from ctray.io.corpus import CorpusError

    files = local_files(cfg.path, fmt)
    if files is None or fmt == "txt":  # an empty .txt report is a row error, not a bad file
        return False
    if not files:
        raise CorpusError(f"{cfg.path}: no {fmt} file found")
    for f in files:
        if Path(f).stat().st_size == 0:
            raise CorpusError(f"{f}: empty file (0 bytes); expected a header and rows")
    checks = {"csv": _check_csv, "parquet": _check_parquet, "jsonl": _check_jsonl}
    ids = [checks[fmt](f, cfg, wanted) for f in files]
    if not cfg.id_column or not cfg.check_duplicate_ids:
        return False
    _check_unique(pd.concat(ids, ignore_index=True), cfg.id_column)
    return True


def _warn_empty(path: str) -> None:
    # The CLI shows warnings as plain lines; a silent 0-row run looks like success.
    print(f"ctray: warning: {path} has a header but no rows; nothing to do",
          file=sys.stderr)


def _missing(path: str, header: list[str], wanted: list[str]) -> None:
    from ctray.io.corpus import CorpusError

    missing = [c for c in dict.fromkeys(wanted) if c not in header]
    if missing:
        raise CorpusError(f"{path}: missing column(s) {missing}; the file has {header}")


def _check_csv(path: str, cfg: "CorpusConfig", wanted: list[str]) -> pd.DataFrame:
    import pyarrow as pa
    from pyarrow import csv as pacsv

    from ctray.io.corpus import CorpusError

    with open(path, "rb") as fh:
        # utf-8-sig: a BOM (Excel's CSV export) is not part of the first column's name.
        text = io.TextIOWrapper(fh, encoding="utf-8-sig", errors="replace", newline="")
        header = next(csv.reader(text), [])
    _missing(path, header, wanted)
    key = cfg.id_column or next(iter(wanted), header[0])
    bad: list[tuple[int | None, int, int]] = []

    def on_invalid(row) -> str:
        # Row text is never kept (clinical text); position and column counts only.
        bad.append((row.number, row.expected_columns, row.actual_columns))
        return "skip"

    def read(threads: bool):
        return pacsv.read_csv(
            path, read_options=pacsv.ReadOptions(use_threads=threads),
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid,
                                             newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(include_columns=[key],
                                                 column_types={key: pa.binary()}))

    try:
        table = read(True)
        if bad:  # row numbers are only known to a single-threaded parse
            bad.clear()
            table = read(False)
    except pa.ArrowInvalid as exc:
        # pyarrow quotes the offending row after a colon: keep only its first clause.
        reason = re.split(r":\s", str(exc), maxsplit=2)
        raise CorpusError(f"{path}: not a readable CSV file ({': '.join(reason[:2])})") from None
    if bad:
        where = ", ".join(f"row {n} has {a} fields, the header {e}" if n is not None
                          else f"a row has {a} fields, the header {e}" for n, e, a in bad[:SHOWN])
        more = f" (and {len(bad) - SHOWN} more)" if len(bad) > SHOWN else ""
        raise CorpusError(f"{path}: malformed CSV: {where}{more} (rows counted from 1 = "
                          "the header; quote fields that contain commas)")
    if table.num_rows == 0:
        _warn_empty(path)
    return _id_frame(path, table.column(key).to_pylist())


def _check_parquet(path: str, cfg: "CorpusConfig", wanted: list[str]) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ctray.io.corpus import CorpusError

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise CorpusError(f"{path}: not a readable Parquet file ({exc})") from None
    _missing(path, pf.schema_arrow.names, wanted)
    if pf.metadata.num_rows == 0:
        _warn_empty(path)
    if not cfg.id_column:
        return _id_frame(path, [])
    return _id_frame(path, pf.read(columns=[cfg.id_column]).column(0).to_pylist(), offset=0)


def _check_jsonl(path: str, cfg: "CorpusConfig", wanted: list[str]) -> pd.DataFrame:
    """Every line must be a JSON object; a wanted key must occur in at least one line
    (a line without it is a row error, all lines without it a missing column)."""
    from ctray.io.corpus import jsonl_objects

    data = Path(path).read_bytes()
    ids, numbers, seen = [], [], set()
    for number, raw, _ in jsonl_objects(path, data):
        seen.update(raw)
        if cfg.id_column:
            ids.append(raw.get(cfg.id_column))
            numbers.append(number)
    if not numbers and not seen:
        raise CorpusError(f"{path}: no JSON lines (only blank lines)")
    missing = [c for c in dict.fromkeys(wanted) if c not in seen]
    if missing:
        raise CorpusError(f"{path}: missing key(s) {missing} in every line; the lines have "
                          f"{sorted(seen)}")
    return _id_frame(path, ids, rows=numbers)


def _id_frame(path: str, values: list, offset: int = 1,
              rows: list[int] | None = None) -> pd.DataFrame:
    """Ids as the reader will produce them (``id_text``), with their row number
    (CSV: the header is row 1; Parquet: rows counted from 0; JSONL: line numbers)."""
    from ctray.io.corpus import id_text

    ids = [id_text(v)[0] for v in values]
    if rows is None:
        rows = list(range(1 + offset, len(ids) + 1 + offset))
    return pd.DataFrame({"file": path, "id": ids, "row": rows})


def _check_unique(ids: pd.DataFrame, column: str) -> None:
    from ctray.io.corpus import CorpusError

    ids = ids[ids["id"].notna() & (ids["id"] != "")]  # empty ids are row errors already
    dup = ids[ids["id"].duplicated(keep=False)]
    if dup.empty:
        return
    shown = []
    for value, g in list(dup.groupby("id", sort=False))[:SHOWN]:
        unit = "line" if str(g["file"].iloc[0]).lower().endswith((".jsonl", ".json")) else "row"
        places = ", ".join(f"{Path(f).name} {unit} {r}" for f, r in zip(g["file"], g["row"]))
        shown.append(f"{value!r} ({places})")
    n = dup["id"].nunique()
    more = f" and {n - SHOWN} more" if n > SHOWN else ""
    raise CorpusError(f"{dup['file'].iloc[0]}: duplicate row keys in column {column!r}: "
                      f"{'; '.join(shown)}{more}. Ids must be unique for resume to be correct.")
