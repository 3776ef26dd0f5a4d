"""Ids come out exactly as written in every reader format (issue 18): no type
inference, leading zeros kept, integer ids as decimal text (never a float), a null id
or a non-text report field a row error."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ctray.cli import main
from ctray.io.corpus import CorpusConfig, CorpusError, read_corpus


def _rows(cfg: CorpusConfig) -> pd.DataFrame:
    return read_corpus(cfg).to_pandas().set_index("report_id")


def test_jsonl_ids_keep_leading_zeros_and_integers_with_a_null_stay_integers(ray_local, tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(
        '{"study_id": "0012", "report": "No effusion."}\n'
        '{"study_id": 3, "report": "Small effusion."}\n'
        '{"study_id": null, "report": "Id is null."}\n'
        '{"study_id": 7.50, "report": "A decimal id is kept as written."}\n'
        '\n'
        '{"study_id": "x1", "report": 42}\n'
        '{"study_id": "x2", "report": ["a", "list"]}\n'
        '{"study_id": [1, 2], "report": "List id."}\n', encoding="utf-8")
    df = _rows(CorpusConfig(path=str(path), id_column="study_id", text_column="report"))
    assert {"0012", "3", "7.50", "x1", "x2"} <= set(df.index)
    assert pd.isna(df.loc["0012", "_error"]) and df.loc["0012", "text"] == "No effusion."
    assert pd.isna(df.loc["3", "_error"])
    null = df[df["text"] == "Id is null."]
    assert len(null) == 1 and "field 'study_id' is empty" in null["_error"].iloc[0]
    # Numbers or lists in the text field are not labeled as text.
    assert "field 'report' is not text (a number)" in df.loc["x1", "_error"]
    assert "field 'report' is not text (a list)" in df.loc["x2", "_error"]
    listed = df[df["text"] == "List id."]
    assert "is a list, not a string or number" in listed["_error"].iloc[0]
    assert not any(i.endswith(".0") for i in df.index)


def test_csv_ids_keep_leading_zeros_and_a_utf8_bom_is_not_part_of_the_header(ray_local, tmp_path):
    path = tmp_path / "c.csv"
    path.write_bytes("\ufeffid,report\n0012,One.\n3,Two.\n,Three.\n".encode("utf-8"))
    df = _rows(CorpusConfig(path=str(path), id_column="id", text_column="report"))
    assert {"0012", "3"} <= set(df.index)
    assert "field 'id' is empty" in df[df["text"] == "Three."]["_error"].iloc[0]


def test_parquet_integer_ids_with_a_null_are_decimal_text(ray_local, tmp_path):
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"id": pa.array([12, 3, None], pa.int64()),
                             "report": ["One.", "Two.", "Three."]}), path)
    df = _rows(CorpusConfig(path=str(path), id_column="id", text_column="report"))
    assert {"12", "3"} <= set(df.index)
    assert "field 'id' is empty" in df[df["text"] == "Three."]["_error"].iloc[0]
    # pandas writes an int column with a null as float64: still integer text.
    floaty = tmp_path / "f.parquet"
    pd.DataFrame({"id": [12, None], "report": ["One.", "Two."]}).to_parquet(floaty)
    assert "12" in set(_rows(CorpusConfig(path=str(floaty), id_column="id",
                                          text_column="report")).index)
    strings = tmp_path / "s.parquet"
    pd.DataFrame({"id": ["0012", "0013"], "report": [1, 2]}).to_parquet(strings)
    df = _rows(CorpusConfig(path=str(strings), id_column="id", text_column="report"))
    assert list(df.index) == ["0012", "0013"]
    assert "is not text (a number)" in df.loc["0012", "_error"]


def test_a_malformed_jsonl_line_is_named_by_its_line_number(ray_local, tmp_path, capsys):
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "a", "report": "One."}\n\n{"id": "b", "report": "Two.",\n',
                    encoding="utf-8")
    with pytest.raises(CorpusError, match=r"c.jsonl: line 3 is not valid JSON"):
        read_corpus(CorpusConfig(path=str(path), id_column="id", text_column="report"))
    out = tmp_path / "out"
    code = main(["stats-text", "--set", f"corpus.path={path}", "--set", "corpus.id_column=id",
                 "--set", "corpus.text_column=report", "--output", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "line 3 is not valid JSON" in err[0], err
    assert not out.exists()
    dup = tmp_path / "d.jsonl"
    dup.write_text('{"id": "0012", "report": "One."}\n{"id": 12, "report": "Two."}\n'
                   '{"id": "0012", "report": "Three."}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"'0012' \(d.jsonl line 1, d.jsonl line 3\)"):
        read_corpus(CorpusConfig(path=str(dup), id_column="id", text_column="report"))


def test_a_null_id_fixed_and_rerun_labels_only_the_fixed_report(ray_local, tmp_path, capsys):
    """The issue's rerun: 10 reports, one null id; after the fix, one more row, not 10."""
    path = tmp_path / "c.jsonl"
    lines = [f'{{"study_id": {i}, "report": "Report {i}. No effusion."}}' for i in range(10)]
    lines[4] = '{"study_id": null, "report": "Report 4. No effusion."}'
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    args = ["stats-text", "--set", f"corpus.path={path}", "--set", "corpus.id_column=study_id",
            "--set", "corpus.text_column=report", "--set", "lang=en", "--output", str(out)]
    assert main(args) == 0
    res = pd.read_parquet(out / "results")
    assert sorted(res["report_id"]) == sorted(str(i) for i in range(10) if i != 4)
    lines[4] = '{"study_id": 4, "report": "Report 4. No effusion."}'
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    capsys.readouterr()
    assert main(args) == 0
    assert "1 rows done, 0 failed, 10 already done" in capsys.readouterr().out
    res = pd.read_parquet(out / "results")
    assert sorted(res["report_id"]) == sorted(str(i) for i in range(10))
