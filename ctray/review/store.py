"""The review database: disagreement queues and reviewers' labels in SQLite.

One row per report x observation x reviewer (``labels``), with created / updated
timestamps. SQLite runs in WAL mode (readers never block the writer) with a busy
timeout, and a reviewer's save of one report is one ``BEGIN IMMEDIATE`` transaction
after every value has been validated: a save lands whole or not at all, and two
reviewers saving at the same moment each keep their own rows (their keys differ), so
nobody's work is lost or overwritten. A reviewer saving a report again replaces only
their own values.

Gold export: per report and observation the majority of the reviewers' values, a tie
going to the latest save. Agreement: Cohen's kappa (scikit-learn) per observation
over the reports that more than one reviewer saved, averaged over reviewer pairs
(weighted by the reports each pair shares).
"""

from __future__ import annotations

import itertools
import json
import re
import sqlite3
import time
from collections import Counter
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from ctray.review.label_sets import TASKS, ReviewTask

SCHEMA = """
CREATE TABLE IF NOT EXISTS queues (
    id TEXT PRIMARY KEY, task TEXT NOT NULL, name_a TEXT NOT NULL, name_b TEXT NOT NULL,
    created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    queue_id TEXT NOT NULL REFERENCES queues(id), report_id TEXT NOT NULL, text TEXT NOT NULL,
    labels_a TEXT NOT NULL, labels_b TEXT NOT NULL, evidence_a TEXT, evidence_b TEXT,
    n_diff INTEGER NOT NULL, PRIMARY KEY (queue_id, report_id));
CREATE TABLE IF NOT EXISTS labels (
    queue_id TEXT NOT NULL, report_id TEXT NOT NULL, observation TEXT NOT NULL,
    reviewer TEXT NOT NULL, value REAL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
    PRIMARY KEY (queue_id, report_id, observation, reviewer),
    FOREIGN KEY (queue_id, report_id) REFERENCES items (queue_id, report_id));
"""
_REVIEWER = re.compile(r"^[\w.@ -]{1,64}$")
_QUEUE = re.compile(r"^[\w.-]{1,80}$")


class ReviewError(ValueError):
    """A request the store refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _now() -> str:
    t = time.time()  # one reading: seconds and microseconds of the same instant
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1e6) % 10**6:06d}Z"


def check_reviewer(name: Any) -> str:
    if not isinstance(name, str) or not _REVIEWER.match(name.strip() or "-!"):
        raise ReviewError("reviewer must be 1-64 letters, digits, spaces or . @ _ -", 422)
    return name.strip()


class ReviewStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        # One connection per call: calls come from worker threads, and autocommit
        # (isolation_level=None) leaves transactions to the explicit BEGIN below.
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        con.execute("PRAGMA busy_timeout=30000")
        con.execute("PRAGMA foreign_keys=ON")
        con.execute("PRAGMA synchronous=NORMAL")
        return con

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with closing(self._connect()) as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    # ------------------------------------------------------------------ queues

    def create_queue(self, queue_id: str, task: str, name_a: str, name_b: str,
                     reports: pd.DataFrame, a: dict[str, dict], b: dict[str, dict],
                     evidence_a: dict[str, dict] | None = None,
                     evidence_b: dict[str, dict] | None = None) -> dict[str, int]:
        """A queue of the reports (``report_id``, ``text``) whose labels ``a`` and ``b``
        (report id -> key -> value) differ; reports missing from either are left out."""
        if not _QUEUE.match(queue_id):
            raise ReviewError(f"queue id {queue_id!r}: letters, digits, . _ - only", 422)
        spec = TASKS[task]
        rows = []
        for rid, text in zip(reports["report_id"].astype(str), reports["text"]):
            if rid not in a or rid not in b:
                continue
            la = {k: spec.value(a[rid].get(k)) for k in spec.keys}
            lb = {k: spec.value(b[rid].get(k)) for k in spec.keys}
            diff = sum(la[k] != lb[k] for k in spec.keys)
            if diff:
                rows.append((queue_id, rid, text, json.dumps(la), json.dumps(lb),
                             json.dumps((evidence_a or {}).get(rid) or {}),
                             json.dumps((evidence_b or {}).get(rid) or {}), diff))
        with self._write() as con:
            if con.execute("SELECT 1 FROM queues WHERE id=?", (queue_id,)).fetchone():
                raise ReviewError(f"review queue {queue_id!r} exists already", 409)
            con.execute("INSERT INTO queues VALUES (?,?,?,?,?)",
                        (queue_id, task, name_a, name_b, _now()))
            con.executemany("INSERT INTO items VALUES (?,?,?,?,?,?,?,?)", rows)
        compared = sum(1 for rid in reports["report_id"].astype(str) if rid in a and rid in b)
        return {"compared": compared, "disagreements": len(rows)}

    def queue(self, queue_id: str) -> dict[str, Any]:
        with closing(self._connect()) as con:
            row = con.execute("SELECT id, task, name_a, name_b, created_at FROM queues "
                              "WHERE id=?", (queue_id,)).fetchone()
        if row is None:
            raise ReviewError(f"no review queue {queue_id!r}", 404)
        return dict(zip(("id", "task", "name_a", "name_b", "created_at"), row))

    def queues(self) -> list[dict[str, Any]]:
        with closing(self._connect()) as con:
            rows = con.execute(
                "SELECT q.id, q.task, q.name_a, q.name_b, q.created_at, COUNT(i.report_id) "
                "FROM queues q LEFT JOIN items i ON i.queue_id = q.id GROUP BY q.id "
                "ORDER BY q.created_at").fetchall()
        return [dict(zip(("id", "task", "name_a", "name_b", "created_at", "items"), r))
                for r in rows]

    def items(self, queue_id: str, reviewer: str | None = None) -> list[dict[str, Any]]:
        """The queue's reports, most differing observations first."""
        self.queue(queue_id)
        with closing(self._connect()) as con:
            rows = con.execute(
                "SELECT i.report_id, i.n_diff, COUNT(DISTINCT l.reviewer), "
                "SUM(l.reviewer = ?) FROM items i LEFT JOIN labels l "
                "ON l.queue_id = i.queue_id AND l.report_id = i.report_id "
                "WHERE i.queue_id = ? GROUP BY i.report_id "
                "ORDER BY i.n_diff DESC, i.report_id", (reviewer or "", queue_id)).fetchall()
        return [{"report_id": r[0], "n_diff": r[1], "reviewers": r[2],
                 "reviewed_by_me": bool(r[3])} for r in rows]

    def item(self, queue_id: str, report_id: str, reviewer: str | None = None) -> dict[str, Any]:
        q = self.queue(queue_id)
        with closing(self._connect()) as con:
            row = con.execute("SELECT text, labels_a, labels_b, evidence_a, evidence_b, n_diff "
                              "FROM items WHERE queue_id=? AND report_id=?",
                              (queue_id, report_id)).fetchone()
            mine = con.execute("SELECT observation, value, updated_at FROM labels WHERE "
                               "queue_id=? AND report_id=? AND reviewer=?",
                               (queue_id, report_id, reviewer or "")).fetchall()
        if row is None:
            raise ReviewError(f"report {report_id!r} is not in queue {queue_id!r}", 404)
        text, la, lb, ea, eb, n_diff = row
        return {**q, "report_id": report_id, "text": text, "labels_a": json.loads(la),
                "labels_b": json.loads(lb), "evidence_a": json.loads(ea or "{}"),
                "evidence_b": json.loads(eb or "{}"), "n_diff": n_diff,
                "mine": {o: v for o, v, _ in mine},
                "saved_at": max((t for *_, t in mine), default=None)}

    # ------------------------------------------------------------------ saving

    def save(self, queue_id: str, report_id: str, reviewer: str,
             values: dict[str, Any]) -> dict[str, Any]:
        """Store one reviewer's values for one report, all or nothing."""
        reviewer = check_reviewer(reviewer)
        spec = TASKS[self.queue(queue_id)["task"]]
        if not isinstance(values, dict) or not values:
            raise ReviewError("values must be an object: observation -> value", 422)
        clean: dict[str, float | None] = {}
        for key, raw in values.items():
            if key not in spec.keys:
                raise ReviewError(f"{key!r} is not a {spec.name} observation", 422)
            try:
                clean[key] = spec.value(raw)
            except (TypeError, ValueError) as exc:
                raise ReviewError(f"{key}: {exc}", 422) from None
        with self._write() as con:
            # Stamped under the write lock: stamps follow commit order, so a concurrent
            # save that commits later never carries an earlier updated_at.
            now = _now()
            if not con.execute("SELECT 1 FROM items WHERE queue_id=? AND report_id=?",
                               (queue_id, report_id)).fetchone():
                raise ReviewError(f"report {report_id!r} is not in queue {queue_id!r}", 404)
            con.executemany(
                "INSERT INTO labels VALUES (?,?,?,?,?,?,?) ON CONFLICT "
                "(queue_id, report_id, observation, reviewer) DO UPDATE SET "
                "value = excluded.value, updated_at = excluded.updated_at",
                [(queue_id, report_id, k, reviewer, v, now, now) for k, v in clean.items()])
        return {"saved": len(clean), "saved_at": now}

    def labels(self, queue_id: str) -> pd.DataFrame:
        self.queue(queue_id)
        with closing(self._connect()) as con:
            return pd.read_sql_query(
                "SELECT report_id, observation, reviewer, value, created_at, updated_at "
                "FROM labels WHERE queue_id=? ORDER BY report_id, observation, reviewer",
                con, params=(queue_id,))

    # ------------------------------------------------------------------ gold and kappa

    def gold(self, queue_id: str) -> pd.DataFrame:
        """The reviewed reports in the task's gold layout (id column + display names)."""
        spec = TASKS[self.queue(queue_id)["task"]]
        rows = self.labels(queue_id)
        table: dict[str, dict[str, float | None]] = {}
        for (rid, key), group in rows.groupby(["report_id", "observation"], sort=True):
            table.setdefault(rid, {})[key] = _majority(group)
        out = pd.DataFrame.from_dict(table, orient="index", columns=list(spec.keys))
        out = out.reindex(columns=list(spec.keys)).astype("float64")
        out.index.name = spec.id_name
        out = out.rename(columns=spec.names).reset_index()
        if spec.name == "ctrate":  # binary task: 0/1 integers, as CT-RATE writes them
            header = spec.header()
            out[header] = out[header].fillna(0).astype("int64")
        return out

    def kappa(self, queue_id: str) -> dict[str, Any]:
        from sklearn.metrics import cohen_kappa_score

        spec = TASKS[self.queue(queue_id)["task"]]
        rows = self.labels(queue_id)
        rows["label"] = rows["value"].map(lambda v: "blank" if pd.isna(v) else str(int(v)))
        per_report = rows.groupby("report_id")["reviewer"].nunique()
        shared = per_report[per_report > 1].index
        out = []
        for key in spec.keys:
            sub = rows[(rows["observation"] == key) & rows["report_id"].isin(shared)]
            wide = sub.pivot(index="report_id", columns="reviewer", values="label")
            seen, agree, pairs, weighted, scored = 0, 0, 0, 0.0, 0
            for r1, r2 in itertools.combinations(sorted(wide.columns), 2):
                both = wide[[r1, r2]].dropna()
                if both.empty:
                    continue
                pairs += 1
                seen += len(both)
                agree += int((both[r1] == both[r2]).sum())
                # One class only in both columns: kappa is 0/0 (undefined), not scored.
                if len(set(both[r1]) | set(both[r2])) > 1:
                    weighted += cohen_kappa_score(both[r1], both[r2]) * len(both)
                    scored += len(both)
            out.append({
                "observation": spec.names[key], "reports": int(len(wide)), "pairs": pairs,
                "agreement": (agree / seen) if seen else None,
                "kappa": (weighted / scored) if scored else None})
        return {"reports_with_several_reviewers": int(len(shared)),
                "reviewers": sorted(rows["reviewer"].unique().tolist()), "observations": out}


def _majority(group: pd.DataFrame) -> float | None:
    values = [None if pd.isna(v) else float(v) for v in group["value"]]
    counts = Counter(values)
    top = max(counts.values())
    tied = {v for v, c in counts.items() if c == top}
    if len(tied) == 1:
        return tied.pop()
    latest = group.sort_values("updated_at").iloc[::-1]
    for v in latest["value"]:
        value = None if pd.isna(v) else float(v)
        if value in tied:
            return value
    return None
