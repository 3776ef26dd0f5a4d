"""Reading what users upload to the review page: a reports file (CSV or Parquet) and a
label table (a gold file in the CheXpert or CT-RATE layout). Every problem is a
``ReviewError`` with a message that names the file and the column, never report text.
"""

from __future__ import annotations

import io
import math
from typing import Any

import pandas as pd

from ctray.review.store import ReviewError
from ctray.review.label_sets import ReviewTask

ID_COLUMNS = ("report_id", "uid", "VolumeName", "id", "study_id", "Reports")
TEXT_COLUMNS = ("text", "report", "report_text")
# Sections joined (blank line between) when there is no single text column:
# Open-i / CheXpert (findings, impression) and CT-RATE (English or Japanese).
SECTION_SETS = (("findings", "impression"), ("Findings_EN", "Impressions_EN"),
                ("Findings_JA", "Impressions_JA"))


def read_table(data: bytes, filename: str, max_rows: int) -> pd.DataFrame:
    name = filename.lower()
    if not data:
        raise ReviewError(f"{filename}: the file is empty")
    if name.endswith(".parquet") or data[:4] == b"PAR1":
        try:
            import pyarrow.parquet as pq

            table = pq.read_table(io.BytesIO(data))
        except Exception as exc:  # noqa: BLE001 - any unreadable Parquet
            raise ReviewError(f"{filename}: not a readable Parquet file "
                              f"({type(exc).__name__})") from None
        df = table.to_pandas()
    elif name.endswith((".csv", ".tsv", ".txt")) or "." not in name:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ReviewError(f"{filename}: not UTF-8 text (invalid byte at offset {exc.start}); "
                              "save the file as UTF-8 and upload it again") from None
        try:
            df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False,
                             sep="\t" if name.endswith(".tsv") else ",")
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise ReviewError(f"{filename}: not a readable CSV file "
                              f"({str(exc).splitlines()[0][:200]})") from None
    else:
        raise ReviewError(f"{filename}: upload a .csv or .parquet file")
    if len(df) == 0:
        raise ReviewError(f"{filename}: the file has a header but no rows")
    if len(df) > max_rows:
        raise ReviewError(f"{filename}: {len(df)} rows; the page takes at most {max_rows} "
                          "(run label-cxr / label-findings for bigger corpora)", 413)
    return df


def _id_column(df: pd.DataFrame, filename: str) -> str:
    col = next((c for c in ID_COLUMNS if c in df.columns), None)
    if col is None:
        raise ReviewError(f"{filename}: no id column; name one of {', '.join(ID_COLUMNS)} "
                          f"(found: {', '.join(map(str, df.columns[:20]))})", 422)
    ids = df[col].astype(str).str.strip()
    if (ids == "").any():
        raise ReviewError(f"{filename}: empty id in column {col!r} (row "
                          f"{int((ids == '').to_numpy().argmax()) + 2})", 422)
    if ids.duplicated().any():
        raise ReviewError(f"{filename}: duplicate id {ids[ids.duplicated()].iloc[0]!r} in "
                          f"column {col!r}", 422)
    return col


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def read_reports(data: bytes, filename: str, max_rows: int, max_chars: int) -> pd.DataFrame:
    """``report_id`` and ``text`` columns from an uploaded reports file."""
    df = read_table(data, filename, max_rows)
    id_col = _id_column(df, filename)
    text_col = next((c for c in TEXT_COLUMNS if c in df.columns), None)
    if text_col is not None:
        texts = [_cell(v) for v in df[text_col]]
    else:
        sections = next((s for s in SECTION_SETS if any(c in df.columns for c in s)), None)
        if sections is None:
            raise ReviewError(
                f"{filename}: no report text column; name one of {', '.join(TEXT_COLUMNS)}, or "
                "give sections (findings + impression, Findings_EN + Impressions_EN, "
                f"Findings_JA + Impressions_JA) (found: {', '.join(map(str, df.columns[:20]))})",
                422)
        present = [c for c in sections if c in df.columns]
        texts = ["\n\n".join(p for p in (_cell(r[c]) for c in present) if p)
                 for _, r in df[present].iterrows()]
    too_long = [i for i, t in enumerate(texts) if len(t) > max_chars]
    if too_long:
        raise ReviewError(f"{filename}: row {too_long[0] + 2} has {len(texts[too_long[0]])} "
                          f"characters; the limit is {max_chars} per report", 413)
    return pd.DataFrame({"report_id": df[id_col].astype(str).str.strip(), "text": texts})


def read_label_table(data: bytes, filename: str, spec: ReviewTask,
                     max_rows: int) -> dict[str, dict[str, float | None]]:
    """Report id -> key -> value from a label table in the task's layout."""
    df = read_table(data, filename, max_rows)
    id_col = _id_column(df, filename)
    columns = {spec.key_for(str(c)): c for c in df.columns if spec.key_for(str(c))}
    missing = [spec.names[k] for k in spec.keys if k not in columns]
    if missing:
        raise ReviewError(f"{filename}: missing label column(s) {missing} for the "
                          f"{spec.name} task", 422)
    out: dict[str, dict[str, float | None]] = {}
    for pos, (_, row) in enumerate(df.iterrows()):
        rid = str(row[id_col]).strip()
        labels = {}
        for key, col in columns.items():
            try:
                labels[key] = spec.value(row[col])
            except (TypeError, ValueError) as exc:
                raise ReviewError(f"{filename}: row {pos + 2}, column {col!r}: {exc}",
                                  422) from None
        out[rid] = labels
    return out
