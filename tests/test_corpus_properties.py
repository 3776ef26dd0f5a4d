"""Property test (issue 18): generated CSV / JSONL corpora with odd ids (leading zeros,
numbers, "null", unicode), quotes, commas and newlines in fields, empty fields, invalid
UTF-8, a BOM and duplicate ids go through the stats-text job; every input id comes out
exactly once in results ∪ errors, unchanged, or a duplicate is refused with nothing
written. One Ray session serves all examples."""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections import Counter

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctray.errors import UserError
from ctray.tasks.textstats.stats_job import TextStatsConfig, run_text_stats

BAD = "\x01BAD\x01"  # replaced by an invalid UTF-8 byte after encoding
ODD_IDS = ["0012", "007", "1e3", "NaN", "null", "true", "-0", "1.50", "12", "a,b", 'q"uote',
           "日本語", "x y", "0x1F"]
plain_id = st.text(st.characters(whitelist_categories=("L", "N", "P", "S", "Zs")),
                   min_size=1, max_size=10).filter(lambda s: s == s.strip() and s)
ids = st.one_of(st.sampled_from(ODD_IDS), plain_id)
texts = st.one_of(
    st.just(""), st.just("   "),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\x01"),
            max_size=60),
    st.sampled_from(['He said "no effusion", then left.\nSecond line.', "肺野に異常なし。",
                     "Café sign" + BAD, "a,b,c\r\nd"]),
)


@st.composite
def corpora(draw):
    n = draw(st.integers(1, 6))
    row_ids = draw(st.lists(ids, min_size=n, max_size=n, unique=True))
    duplicate = draw(st.booleans()) and draw(st.integers(0, 3)) == 0
    if duplicate:
        row_ids.append(row_ids[0])
    rows = [(i, draw(texts)) for i in row_ids]
    return draw(st.sampled_from(["csv", "jsonl"])), rows, duplicate, draw(st.booleans())


def _write(path, fmt, rows, bom):
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["id", "report"])
        w.writerows(rows)
        data = buf.getvalue().encode("utf-8").replace(BAD.encode(), b"\xff")
    else:
        lines = [json.dumps({"id": i, "report": t}, ensure_ascii=False) for i, t in rows]
        data = "\n".join(lines).encode("utf-8").replace(b"\\u0001BAD\\u0001", b"\xff")
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)


COUNTER = itertools.count()


@settings(max_examples=10, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(corpus=corpora())
def test_every_id_once_and_unchanged_in_results_and_errors(ray_local, tmp_path, corpus):
    fmt, rows, duplicate, bom = corpus
    k = next(COUNTER)
    path = tmp_path / f"c{k}.{fmt}"
    _write(path, fmt, rows, bom)
    out = tmp_path / f"out{k}"
    cfg = TextStatsConfig.model_validate({
        "corpus": {"path": str(path), "id_column": "id", "text_column": "report"},
        "run": {"output": str(out)}, "lang": "en"})
    if duplicate:
        with pytest.raises(UserError, match="duplicate"):
            run_text_stats(cfg)
        assert not (out / "results").exists()
        return
    run_text_stats(cfg)
    seen = []
    for table in ("results", "errors"):
        if (out / table).exists():
            seen += pd.read_parquet(out / table, columns=["report_id"])["report_id"].tolist()
    assert Counter(seen) == Counter(i for i, _ in rows)
