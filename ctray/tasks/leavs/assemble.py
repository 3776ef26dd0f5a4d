"""Fan-in: group every stage's rows by (report_id, organ) and build the labels.

All stages' finished rows are mapped to one narrow event schema
``(report_id, organ, kind, payload)`` so they can be unioned and grouped by Ray
Data; the group functions here are plain functions of one organ's events (unit
tested without Ray). Workers write the labels (Parquet), the release-layout CSV
shards and the list of incomplete organs; the driver only concatenates CSV
shard files byte by byte.

An organ is labelled only when every question it needed has an answer; otherwise
it is listed in ``incomplete/`` with the stage it is waiting on (a failed row, to
be fixed with ``run.retry_failed``), so a partial run is never mistaken for labels.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

import pandas as pd

from ctray.io.output import USAGE_COLS
from ctray.tasks.leavs import schema
from ctray.tasks.leavs.fanout import FIXED_URGENCY, URGENT_CERTAINTIES, evidence, parse_idx
from dataclasses import dataclass
from typing import Any
from ctray.pipeline.runner import RunSummary

EVENT_COLS = ["report_id", "organ", "kind", "payload"]
OK = "ok"
CSV_NAME = "parsing_results_llm.csv"
RELEASE_COLUMNS = ["subjectid_studyid", "organ", "type_annotation", *schema.FINDING_TYPES]
NOT_MENTIONED = int(schema.Certainty.NOT_MENTIONED)
NO_URGENCY = schema.URGENCY_MISSING


def _py(value):
    return value.item() if hasattr(value, "item") else str(value)


def events(batch: pd.DataFrame, kind: str, fields: Iterable[str]) -> pd.DataFrame:
    """Any stage's rows -> narrow events carrying the ``fields`` as a JSON payload."""
    fields = list(fields)
    recs = batch[["report_id", "organ", *fields]].to_dict("records")
    return pd.DataFrame(
        [{"report_id": str(r["report_id"]), "organ": str(r["organ"]), "kind": kind,
          "payload": json.dumps({f: r[f] for f in fields}, default=_py, ensure_ascii=False)}
         for r in recs], columns=EVENT_COLS)


# Stage (pass) whose results each event kind comes from, in pipeline order.
KIND_PASS = {"list": "filter_list", "check": "filter_check", "types": "finding_types",
             "certainty": "certainty", "urgency": "urgency"}
STAGES = tuple(KIND_PASS.values())
# Which columns of each stage's results become events (LLM usage travels along, so
# the labels carry what each organ cost per stage).
EVENT_FIELDS: dict[str, tuple[str, ...]] = {
    "base": ("n_sentences",),
    "list": ("sentences_json", "listed", *USAGE_COLS),
    "check": ("sentence_idx", "informative", *USAGE_COLS),
    "types": ("types", *USAGE_COLS),
    "certainty": ("finding_type", "certainty", *USAGE_COLS),
    "urgency": ("finding_type", "urgency", *USAGE_COLS),
}
USAGE_COLUMNS = [f"{p}_{c}" for p in STAGES for c in USAGE_COLS]


def organ_usage(ev: dict[str, list[dict[str, Any]]]) -> dict[str, int]:
    """LLM calls and tokens spent on one organ, per stage."""
    out = {c: 0 for c in USAGE_COLUMNS}
    for kind, stage in KIND_PASS.items():
        for e in ev.get(kind, []):
            for c in USAGE_COLS:
                out[f"{stage}_{c}"] += int(e.get(c) or 0)
    return out


def _by_kind(group: pd.DataFrame) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for kind, payload in zip(group["kind"], group["payload"]):
        out.setdefault(kind, []).append(json.loads(payload))
    return out


def filter_state(ev: dict[str, list[dict[str, Any]]], fast: bool) -> dict[str, Any] | None:
    """Union of the listed sentences and the sentences checked informative.

    None without a list answer; ``complete`` is False while some sentence check
    the organ needs has no answer."""
    if not ev.get("list"):
        return None
    first = ev["list"][0]
    listed = parse_idx(first["listed"])
    sentences = json.loads(first["sentences_json"])
    checks = {} if fast else {int(c["sentence_idx"]): bool(c["informative"])
                              for c in ev.get("check", [])}
    expected = 0 if fast else len(sentences) - len(set(listed))
    kept = sorted(set(listed) | {i for i, yes in checks.items() if yes})
    return {"sentences_json": first["sentences_json"], "n_sentences": len(sentences),
            "kept": kept, "evidence_json": evidence(first["sentences_json"], kept),
            "n_evidence": len(kept), "filter_complete": len(checks) >= expected}


def combine_filter(group: pd.DataFrame, fast: bool) -> pd.DataFrame:
    """map_groups: one (report, organ) group of list/check events -> its evidence row."""
    state = filter_state(_by_kind(group), fast)
    cols = ["report_id", "organ", "n_sentences", "evidence_json", "n_evidence",
            "filter_complete"]
    if state is None:
        return pd.DataFrame(columns=cols)
    row = {"report_id": group["report_id"].iloc[0], "organ": group["organ"].iloc[0], **state}
    return pd.DataFrame([{c: row[c] for c in cols}])


def organ_labels(ev: dict[str, list[dict[str, Any]]], fast: bool,
                 ask_unselected: bool) -> dict[str, Any]:
    """Codes and urgencies of one organ from its events, or the stage it waits on."""
    codes = {t: NOT_MENTIONED for t in schema.FINDING_TYPES}
    urgency = {t: NO_URGENCY for t in schema.FINDING_TYPES}
    out: dict[str, Any] = {"status": OK, "n_sentences": 0, "n_evidence": 0,
                           "evidence_json": "[]", "types": "", "codes": codes,
                           "urgency": urgency}
    state = filter_state(ev, fast)
    if state is None:
        return {**out, "status": "incomplete:filter_list"}
    out.update(n_sentences=state["n_sentences"], n_evidence=state["n_evidence"],
               evidence_json=state["evidence_json"])
    if not state["filter_complete"]:
        return {**out, "status": "incomplete:filter_check"}
    if state["n_evidence"] == 0:
        return out  # nothing about the organ: every type "not mentioned", no questions
    if not ev.get("types"):
        return {**out, "status": "incomplete:finding_types"}
    chosen = [t for t in ev["types"][0]["types"].split(",") if t]
    out["types"] = ",".join(chosen)
    asked = set(schema.FINDING_TYPES) if ask_unselected else set(chosen)
    answered = {c["finding_type"]: int(c["certainty"]) for c in ev.get("certainty", [])
                if c["finding_type"] in asked}
    codes.update(answered)
    if asked - set(answered):
        return {**out, "status": "incomplete:certainty"}
    rated = {u["finding_type"]: int(u["urgency"]) for u in ev.get("urgency", [])}
    for t, code in codes.items():
        if code in URGENT_CERTAINTIES:
            if t in FIXED_URGENCY:
                urgency[t] = FIXED_URGENCY[t]
            elif t in rated:
                urgency[t] = rated[t]
            else:
                return {**out, "status": "incomplete:urgency"}
    return out


LABEL_COLUMNS = (["report_id", "organ", "status", "n_sentences", "n_evidence", "evidence",
                  "types"] + list(schema.FINDING_TYPES)
                 + [f"urgency_{t}" for t in schema.FINDING_TYPES]
                 + [f"merged_{m}" for m in schema.MERGED_TYPES] + USAGE_COLUMNS)


def assemble_group(group: pd.DataFrame, fast: bool, ask_unselected: bool) -> pd.DataFrame:
    """map_groups: all events of one (report, organ) -> its wide labels row.

    Organs without a ``base`` event (not in the corpus as configured now) are
    dropped, so the output holds exactly the corpus's report x organ pairs."""
    ev = _by_kind(group)
    if not ev.get("base"):
        return pd.DataFrame(columns=LABEL_COLUMNS)
    got = organ_labels(ev, fast, ask_unselected)
    row: dict[str, Any] = {"report_id": group["report_id"].iloc[0],
                           "organ": group["organ"].iloc[0], "status": got["status"],
                           "n_sentences": got["n_sentences"], "n_evidence": got["n_evidence"],
                           "evidence": got["evidence_json"], "types": got["types"]}
    row.update(got["codes"])
    row.update({f"urgency_{t}": u for t, u in got["urgency"].items()})
    row.update({f"merged_{m}": c for m, c in schema.merge_label_row(got["codes"]).items()})
    row.update(organ_usage(ev))
    return pd.DataFrame([row], columns=LABEL_COLUMNS)


def release_rows(labels: pd.DataFrame) -> pd.DataFrame:
    """Wide labels -> the release CSV layout: a labels row and an urgency row per organ."""
    types = list(schema.FINDING_TYPES)
    lab = labels[["report_id", "organ", *types]].assign(type_annotation="labels")
    urg = labels[["report_id", "organ", *[f"urgency_{t}" for t in types]]].rename(
        columns={f"urgency_{t}": t for t in types}).assign(type_annotation="urgency")
    both = pd.concat([lab, urg], ignore_index=True).rename(
        columns={"report_id": "subjectid_studyid"})
    both = both.sort_values(["subjectid_studyid", "organ", "type_annotation"], kind="stable")
    return both[RELEASE_COLUMNS]


def write_labels_shard(batch: pd.DataFrame, out: str, run_id: str) -> pd.DataFrame:
    """map_batches: write one shard of labels, CSV rows and incomplete organs; return counts."""
    from ctray.io.output import shard_digest, write_bytes_atomic

    batch = batch.reset_index(drop=True)
    if batch.empty:
        return pd.DataFrame([{"ok": 0, "incomplete": 0, "by_status": "{}"}])
    name = f"part-{shard_digest(batch[['report_id', 'organ']])}"
    ok = batch[batch["status"] == OK].assign(run_id=run_id)
    todo = batch[batch["status"] != OK]
    if len(ok):
        _write_parquet(ok, f"{out}/labels/{name}.parquet")
        csv = release_rows(ok).to_csv(index=False, header=False, lineterminator="\n")
        write_bytes_atomic(f"{out}/csv_parts/{name}.csv", csv.encode("utf-8"))
    if len(todo):
        _write_parquet(todo[["report_id", "organ", "status", *USAGE_COLUMNS]].assign(run_id=run_id),
                       f"{out}/incomplete/{name}.parquet")
    return pd.DataFrame([{"ok": len(ok), "incomplete": len(todo),
                          "by_status": json.dumps(todo["status"].value_counts().to_dict())}])


def write_usage_shard(batch: pd.DataFrame, out: str) -> pd.DataFrame:
    """map_batches over per-report usage sums: add totals, write, return shard statistics."""
    from ctray.io.output import shard_digest

    batch = batch.reset_index(drop=True)
    if batch.empty:
        return pd.DataFrame([{"reports": 0}])
    for c in USAGE_COLS:
        batch[f"total_{c}"] = sum(batch[f"{p}_{c}"] for p in STAGES).astype("int64")
    _write_parquet(batch, f"{out}/usage_per_report/part-{shard_digest(batch[['report_id']])}.parquet")
    stats: dict[str, Any] = {"reports": len(batch)}
    for c in USAGE_COLUMNS + [f"total_{c}" for c in USAGE_COLS]:
        stats[f"sum_{c}"] = int(batch[c].sum())
    for c in USAGE_COLS:
        stats[f"min_total_{c}"] = int(batch[f"total_{c}"].min())
        stats[f"max_total_{c}"] = int(batch[f"total_{c}"].max())
    return pd.DataFrame([stats])


def combine_usage_stats(shards: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-report usage summary from the writers' shard statistics: for every
    ``<stage>_<usage>`` and ``total_<usage>`` column its sum over the corpus and its
    mean per report, and the range of the per-report totals."""
    shards = [s for s in shards if s.get("reports")]
    n = sum(int(s["reports"]) for s in shards)
    if not n:
        return {"reports": 0}
    out: dict[str, Any] = {"reports": n}
    for key in [k for k in shards[0] if k.startswith("sum_")]:
        col = key[len("sum_"):]
        out[col] = sum(int(s[key]) for s in shards)
        out[f"mean_{col}"] = round(out[col] / n, 2)
    for c in USAGE_COLS:
        out[f"min_total_{c}"] = min(int(s[f"min_total_{c}"]) for s in shards)
        out[f"max_total_{c}"] = max(int(s[f"max_total_{c}"]) for s in shards)
    return out


def _write_parquet(df: pd.DataFrame, uri: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ctray.io.output import write_bytes_atomic

    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False),
                   sink, compression="zstd")
    write_bytes_atomic(uri, sink.getvalue().to_pybytes())


def clear_outputs(out: str) -> None:
    """The assembly is recomputed from the stage outputs on every run."""
    from pyarrow import fs as pafs

    from ctray.io.output import resolve_fs

    for sub in ("labels", "incomplete", "csv_parts", "usage_per_report"):
        filesystem, path = resolve_fs(f"{out}/{sub}")
        if filesystem.get_file_info(path).type == pafs.FileType.Directory:
            filesystem.delete_dir_contents(path)


def concat_csv(out: str, name: str = CSV_NAME) -> str:
    """Join the CSV shards into one file (streamed, never parsed on the driver)."""
    from pyarrow import fs as pafs

    from ctray.io.output import resolve_fs

    parts_fs, parts = resolve_fs(f"{out}/csv_parts")
    info = parts_fs.get_file_info(pafs.FileSelector(parts, allow_not_found=True))
    files = sorted(i.path for i in info if i.is_file and i.base_name.endswith(".csv")
                   and not i.base_name.startswith("."))
    dest = f"{out}/{name}"
    dest_fs, dest_path = resolve_fs(dest)
    tmp = f"{dest_path}.tmp"
    with dest_fs.open_output_stream(tmp) as sink:
        sink.write((",".join(RELEASE_COLUMNS) + "\n").encode("utf-8"))
        for path in files:
            with parts_fs.open_input_stream(path) as src:
                while chunk := src.read(1 << 20):
                    sink.write(chunk)
    dest_fs.move(tmp, dest_path)
    return dest


@dataclass
class LeavsRun:
    output: str
    passes: dict[str, RunSummary | None]
    manifest: dict[str, Any]
    csv: str
