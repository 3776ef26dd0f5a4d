"""Row fan-out between LEAVS stages (Ray Data ``map_batches`` functions).

Each function turns the finished rows of one stage into the rows of the next,
so the driver never sees a row:

    report -> (report, organ)                         filter_list
    (report, organ) -> (report, organ, sentence)      filter_check (sentences not listed)
    (report, organ) with evidence -> same keys        finding_types
    (report, organ) -> (report, organ, type)          certainty
    (report, organ, type) present/possible -> same    urgency

The fan-in (which sentences survive filtration, and the final labels) groups by
``(report_id, organ)``; see :mod:`ctray.tasks.leavs.assemble`.
"""

from __future__ import annotations

import json

import pandas as pd

from ctray.io.corpus import TEXT_COL
from ctray.pipeline.stage import ERROR_COL, ERROR_STAGE_COL, ERROR_TYPE_COL
from ctray.tasks.leavs import schema
from ctray.tasks.leavs.prompts import loads_list
from ctray.text.sentences import split_sentences

ORGAN_KEYS = ("report_id", "organ")
SENTENCE_KEYS = ("report_id", "organ", "sentence_idx")
TYPE_KEYS = ("report_id", "organ", "finding_type")
# Certainties that get an urgency question (present, or possible = radiologist unsure).
URGENT_CERTAINTIES = frozenset({int(schema.Certainty.PRESENT), int(schema.Certainty.UNCERTAIN)})
# An organ reported normal needs no action: urgency 0 without asking.
FIXED_URGENCY = {"normal": int(schema.Urgency.NORMAL)}

_ERRORS = (ERROR_COL, ERROR_STAGE_COL, ERROR_TYPE_COL)


def parse_idx(value) -> list[int]:
    if value is None or (isinstance(value, float) and value != value) or value == "":
        return []
    return [int(v) for v in str(value).split(",") if v.strip()]


def organ_rows(batch: pd.DataFrame, organs: list[str]) -> pd.DataFrame:
    """Corpus rows -> one row per (report, organ) with the report's sentences.

    A report that failed while being read keeps its error on every organ row, so
    it reaches the errors table instead of vanishing."""
    rows = []
    for rec in batch.to_dict("records"):
        failed = rec.get(ERROR_COL) is not None and rec.get(ERROR_COL) == rec.get(ERROR_COL)
        sentences = [] if failed else split_sentences(rec.get(TEXT_COL) or "", lang="en")
        encoded = json.dumps(sentences, ensure_ascii=False)
        for organ in organs:
            row = {"report_id": str(rec["report_id"]), "organ": organ,
                   "sentences_json": encoded, "n_sentences": len(sentences)}
            if failed:
                row.update({c: rec.get(c) for c in _ERRORS})
            rows.append(row)
    cols = ["report_id", "organ", "sentences_json", "n_sentences"]
    out = pd.DataFrame(rows, columns=cols + ([c for c in _ERRORS if c in batch.columns]))
    return out


def check_rows(batch: pd.DataFrame, fast: bool = False) -> pd.DataFrame:
    """filter_list results -> one row per sentence the list step did not pick."""
    rows = []
    if not fast:
        for rec in batch.to_dict("records"):
            listed = set(parse_idx(rec["listed"]))
            for i in range(1, int(rec["n_sentences"]) + 1):
                if i not in listed:
                    rows.append({"report_id": rec["report_id"], "organ": rec["organ"],
                                 "sentence_idx": i, "sentences_json": rec["sentences_json"]})
    return pd.DataFrame(rows, columns=["report_id", "organ", "sentence_idx", "sentences_json"])


def type_rows(batch: pd.DataFrame) -> pd.DataFrame:
    """Filtered organs -> finding-type rows: complete filtration and some evidence."""
    keep = batch[batch["filter_complete"].astype(bool) & (batch["n_evidence"] > 0)]
    return keep[["report_id", "organ", "evidence_json", "n_evidence"]].reset_index(drop=True)


def certainty_rows(batch: pd.DataFrame, ask_unselected: bool) -> pd.DataFrame:
    """finding_types results -> one row per type to ask about.

    ``ask_unselected``: every type is asked (the paper goes through the types not
    chosen too, which separates "stated absent" from "not mentioned"); otherwise
    only the chosen types are, and the rest are "not mentioned" at assembly."""
    rows = []
    for rec in batch.to_dict("records"):
        chosen = set(str(rec["types"]).split(",")) if rec["types"] else set()
        for t in schema.FINDING_TYPES:
            if ask_unselected or t in chosen:
                rows.append({"report_id": rec["report_id"], "organ": rec["organ"],
                             "finding_type": t, "selected": t in chosen,
                             "evidence_json": rec["evidence_json"]})
    return pd.DataFrame(rows, columns=["report_id", "organ", "finding_type", "selected",
                                       "evidence_json"])


def urgency_rows(batch: pd.DataFrame) -> pd.DataFrame:
    """certainty results -> present/possible findings whose urgency must be asked."""
    ask = batch["certainty"].astype(int).isin(URGENT_CERTAINTIES) & \
        ~batch["finding_type"].isin(list(FIXED_URGENCY))
    cols = ["report_id", "organ", "finding_type", "certainty", "evidence_json"]
    return batch.loc[ask, cols].reset_index(drop=True)


def evidence(sentences_json: str, kept: list[int]) -> str:
    sentences = loads_list(sentences_json)
    return json.dumps([sentences[i - 1] for i in kept if 1 <= i <= len(sentences)],
                      ensure_ascii=False)
