"""Corpus readers: layouts, formats and the bad-input messages."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from conftest import shared_file
from ctray.io.corpus import CorpusConfig, CorpusError, read_corpus, stable_id


def rows(ds) -> pd.DataFrame:
    return ds.to_pandas().sort_values("report_id").reset_index(drop=True)


@pytest.mark.shared_data
def test_reads_the_real_ct_rate_validation_csv(ray_local):
    path = shared_file("ct-rate", "validation_reports.csv")
    df = rows(read_corpus(CorpusConfig(path=str(path))))
    raw = pd.read_csv(path)
    assert len(df) == len(raw) == 1564
    assert df["report_id"].is_unique
    assert set(df["report_id"]) == set(raw["VolumeName"])
    one = raw.iloc[100]
    got = df.set_index("report_id").loc[one["VolumeName"]]
    assert got["findings"] == one["Findings_EN"]
    assert got["impressions"] == one["Impressions_EN"]
    expected_text = "\n\n".join(s.strip() for s in (one["Findings_EN"], one["Impressions_EN"])
                                if isinstance(s, str) and s.strip())
    assert got["text"] == expected_text
    # Every real report has text; none is flagged as bad input.
    assert df["_error"].isna().all()


def test_custom_layout_jsonl_parquet_and_txt_folder(ray_local, tmp_path):
    records = [{"uid": f"u{i}", "report": f"Report {i}. No effusion.", "site": "A"} for i in range(5)]
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in records), encoding="utf-8")
    cfg = dict(id_column="uid", text_column="report", keep_columns=["site"])
    a = rows(read_corpus(CorpusConfig(path=str(jsonl), **cfg)))
    assert list(a["report_id"]) == [f"u{i}" for i in range(5)]
    assert list(a["text"]) == [r["report"] for r in records]
    assert set(a["site"]) == {"A"}

    parquet = tmp_path / "c.parquet"
    pd.DataFrame(records).to_parquet(parquet)
    b = rows(read_corpus(CorpusConfig(path=str(parquet), **cfg)))
    assert b[["report_id", "text"]].equals(a[["report_id", "text"]])

    folder = tmp_path / "txt"
    folder.mkdir()
    for r in records:
        (folder / f"{r['uid']}.txt").write_text(r["report"], encoding="utf-8")
    c = rows(read_corpus(CorpusConfig(path=str(folder), format="txt")))
    assert list(c["report_id"]) == [f"u{i}" for i in range(5)]
    assert list(c["text"]) == [r["report"] for r in records]


def test_ids_without_an_id_column_are_content_hashes(ray_local, tmp_path):
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text('{"report": "A"}\n{"report": "B"}\n', encoding="utf-8")
    df = rows(read_corpus(CorpusConfig(path=str(jsonl), id_column=None, text_column="report")))
    assert set(df["report_id"]) == {stable_id("A"), stable_id("B")}
    assert stable_id("A") == stable_id("A") != stable_id("B")


def test_bad_rows_become_row_errors_naming_row_and_field(ray_local, tmp_path):
    csv = tmp_path / "c.csv"
    csv.write_bytes(
        b"VolumeName,ClinicalInformation_EN,Technique_EN,Findings_EN,Impressions_EN\n"
        b"good,ci,t,Normal lungs.,Normal.\n"
        b"latin1,ci,t,Caf\xe9 sign.,Normal.\n"
        b"blank,ci,t,   ,\n"
        b",ci,t,No id here.,Normal.\n"
    )
    df = rows(read_corpus(CorpusConfig(path=str(csv)))).set_index("report_id")
    assert pd.isna(df.loc["good", "_error"])
    assert "'Findings_EN' not valid UTF-8 (byte 0xe9" in df.loc["latin1", "_error"]
    assert "row 'latin1'" in df.loc["latin1", "_error"] and str(csv) in df.loc["latin1", "_error"]
    assert "empty report text" in df.loc["blank", "_error"]
    no_id = df[df["findings"] == "No id here."]
    assert "field 'VolumeName' is empty" in no_id["_error"].iloc[0]


def test_missing_column_and_missing_file_are_clear(ray_local, tmp_path):
    csv = tmp_path / "c.csv"
    csv.write_text("VolumeName,Findings_EN\nv1,text\n", encoding="utf-8")
    with pytest.raises(Exception, match=r"missing column\(s\) \['ClinicalInformation_EN'"):
        read_corpus(CorpusConfig(path=str(csv))).take_all()
    with pytest.raises(CorpusError, match="no such file"):
        read_corpus(CorpusConfig(path=str(tmp_path / "nope.csv")))
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "notes.docx").write_bytes(b"x")
    with pytest.raises(CorpusError, match="cannot tell the corpus format"):
        read_corpus(CorpusConfig(path=str(odd)))
