"""Benchmark items of a setting: the released task data, joined and sampled as the
paper did, with the rendered zero/one-shot prompt and the record fields that the
release's ``generated/`` files hold.
"""

from __future__ import annotations

import ast
import json
import unicodedata
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from ctray.tasks.jcb.registry import Setting, split_source
from ctray.tasks.jcb.release import JcbInputError

# Texts of MR, CCA, DC-ADE and DC-TMN hold a literal backslash-n for each line break.
_ESCAPED_NEWLINE = "\\n"


def _read_file(path: Path, fmt: str) -> pd.DataFrame:
    if not path.exists():
        raise JcbInputError(f"{path}: missing (J-ClinicalBench benchmarks/ layout expected)")
    if fmt == "csv":
        # utf-8-sig: four of the released CSVs start with a BOM.
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    if fmt == "jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8-sig").splitlines()
                if line.strip()]
        return pd.DataFrame(rows)
    if fmt == "json":
        return pd.DataFrame(json.loads(path.read_text(encoding="utf-8-sig")))
    raise JcbInputError(f"unknown data format {fmt!r}")


def _task_dir(benchmarks: Path, setting: Setting) -> Path:
    d = benchmarks / setting.group / setting.name
    if not d.is_dir():
        raise JcbInputError(f"{d}: missing; point benchmarks at the release's data/benchmarks "
                            "folder (it holds CLG/, CLR/, CLU/)")
    return d


def _default_loader(benchmarks: Path, setting: Setting) -> pd.DataFrame:
    d = _task_dir(benchmarks, setting)
    frames = [_read_file(d / name, setting.data.format) for name in setting.data.files]
    # NER: the GPT sample is DataFrame(test_cr + test_rr).sample(n=1001, random_state=42).
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def _cts_loader(benchmarks: Path, setting: Setting) -> pd.DataFrame:
    d = _task_dir(benchmarks, setting)
    parts = []
    for name in setting.data.files:
        df = _read_file(d / name, "csv")
        if "filename" in df.columns:  # progress notes
            parts.append(pd.DataFrame({"id": df["filename"], "category": "progress_note",
                                       "text": df["text"], "simplified_text": df["simplified_text"]}))
        else:
            parts.append(pd.DataFrame({"id": df["file_id"], "category": name.split("_")[0],
                                       "text": df["input_text"],
                                       "simplified_text": df["simplified_text"]}))
    return pd.concat(parts, ignore_index=True)


def _persona(doc: dict[str, str]) -> str:
    return (f"年代: {doc.get('age_group', '')}\n性別: {doc.get('gender', '')}\n"
            f"専門: {doc.get('specialty', '')}\n経験年数: {doc.get('years_of_experience', '')}\n"
            f"病院規模: {doc.get('hospital_bed_count', '')}")


def _hs_ds_loader(benchmarks: Path, setting: Setting) -> pd.DataFrame:
    d = _task_dir(benchmarks, setting)
    summaries = _read_file(d / "data_summary.csv", "csv")
    ds = _read_file(d / "data_ds.csv", "csv").set_index("ds_id")
    doctors = _read_file(d / "data_doctor.csv", "csv").set_index("doctor_id")
    rows = []
    for s in summaries.to_dict("records"):
        example = summaries[(summaries.ds_id == "1") & (summaries.doctor_id == s["doctor_id"])]
        rows.append({"id": f"{s['ds_id']}_{s['doctor_id']}", "ds_id": s["ds_id"],
                     "doctor_id": s["doctor_id"], "text": ds.loc[s["ds_id"], "text"],
                     "persona": _persona(doctors.loc[s["doctor_id"]].to_dict()),
                     "example_summary": example["summary"].iloc[0] if len(example) else "",
                     "summary": s["summary"]})
    return pd.DataFrame(rows)


LOADERS: dict[str, Callable[[Path, Setting], pd.DataFrame]] = {
    "cts": _cts_loader,
    "hs_ds": _hs_ds_loader,
}


def _literal_list(value: Any) -> list:
    if isinstance(value, list):
        return value
    try:
        parsed = ast.literal_eval(str(value))
    except (ValueError, SyntaxError):
        return []
    return list(parsed) if isinstance(parsed, (list, tuple)) else []


def _notes(value: Any) -> str:
    """HS-PN notes (a Python list literal) as the one-shot example shows them."""
    notes = _literal_list(value)
    if not notes:
        return str(value)
    return "\n\n".join(f"プログレスノート{i}：\n{n}" for i, n in enumerate(notes, 1))


def _cast(value: Any, how: str) -> Any:
    if how == "int":
        try:
            return int(value)
        except (TypeError, ValueError):
            return value
    if how == "literal":
        return _literal_list(value) if isinstance(value, str) else value
    return value


def _norm_id(value: Any, form: str | None) -> str:
    text = str(value)
    return unicodedata.normalize(form, text) if form else text


def load_items(benchmarks: str | Path, setting: Setting, shot: str,
               limit: int | None = None) -> list[dict[str, Any]]:
    """Items of one setting and shot, in the released order, each with ``item_key``,
    ``prompt`` (rendered) and ``record`` (the generated/ fields except the output)."""
    root = Path(benchmarks)
    if not root.is_dir():
        raise JcbInputError(f"benchmarks {root}: no such folder")
    loader = LOADERS.get(setting.data.loader or "", _default_loader)
    df = loader(root, setting)
    if setting.data.sample:
        spec = dict(setting.data.sample)
        # A data set smaller than the sample (a test fixture) is taken whole, shuffled alike.
        spec["n"] = min(spec.get("n", len(df)), len(df))
        df = df.sample(**spec)
    offset = setting.prompt.one_shot_offset if shot == "one_shot" else 0
    if setting.data.take is not None:
        df = df.iloc[offset:offset + setting.data.take]
    if shot == "one_shot" and setting.prompt.one_shot_exclude:
        column = setting.prompt.one_shot_exclude_column or setting.data.id
        drop = {_norm_id(v, setting.data.normalize_id) for v in setting.prompt.one_shot_exclude}
        df = df[~df[column].map(lambda v: _norm_id(v, setting.data.normalize_id)).isin(drop)]
    if limit is not None:
        df = df.head(limit)
    template = (_task_dir(root, setting) / setting.prompt_file(shot)).read_text(encoding="utf-8")
    options = None
    if setting.prompt.options_from:
        seen: dict[str, None] = {}
        full = loader(root, setting)  # every candidate of the file, not only this slice
        for value in full[setting.prompt.options_from]:
            for item in _literal_list(value):
                seen.setdefault(str(item), None)
        options = str(list(seen))
    items = []
    for position, row in enumerate(df.to_dict("records")):
        values = {k: ("" if v is None else v) for k, v in row.items()}
        for col in ("text",):
            if isinstance(values.get(col), str):
                values[col] = values[col].replace(_ESCAPED_NEWLINE, "\n")
        if "notes" in values:
            values["notes"] = _notes(values["notes"])
        if options is not None:
            values["options"] = options
        if "options" in values and setting.name == "MCQA":
            # 0-based numbering: the released answers are 0-based (see docs/jclinicalbench.md).
            values["numbered_options"] = "\n".join(
                f"{i}. {o}" for i, o in enumerate(_literal_list(values["options"])))
        prompt = template
        for placeholder, column in setting.prompt.placeholders.items():
            prompt = prompt.replace(placeholder, str(values.get(column, "")))
        record = {}
        for out_key, spec in setting.record.items():
            column, how = split_source(spec)
            if column == "generated":
                record[out_key] = None
            else:
                record[out_key] = _cast(row.get(column), how)
        key_value = row.get(setting.data.id) if setting.data.id else None
        key = (f"{position:06d}" if key_value is None
               else f"{position:06d}:{_norm_id(key_value, setting.data.normalize_id)}")
        items.append({"item_key": key, "item_index": position, "prompt": prompt,
                      "record": record})
    return items
