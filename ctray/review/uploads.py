"""The review page's background labeling job: an uploaded corpus through served labelers.

``label_upload`` runs as a Ray task on the review replica's node (the job folder is
on that node's disk). It sends the reports in chunks to each chosen labeler's
``POST /label`` through the Serve proxy, records per-report errors (an item error,
or the chunk's HTTP failure when a labeler goes down mid-run) instead of stopping,
rewrites ``progress.json`` after every chunk, and per labeler writes
``results_<labeler>.parquet`` (labels, evidence, error per report),
``labels_<labeler>.csv`` in the task's layout (CheXpert: id + 14 observations as
1.0/0.0/-1.0/empty; CT-RATE: ``VolumeName`` + 18 findings as 0/1), ``errors_<labeler>.csv``
and ``manifest.json``. A labeler whose results exist is skipped, so rerunning the
task on the same folder resumes. Report text is never logged.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd

from ctray.review.label_sets import TASKS, ReviewTask

PROGRESS = "progress.json"
REPORTS = "reports.parquet"


def write_json(path: Path, value: Any) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(value, default=str), encoding="utf-8")
    os.replace(tmp, path)  # readers never see a half-written file


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def normalise_item(spec: ReviewTask, item: dict[str, Any]) -> tuple[dict, dict, str | None]:
    """(labels key -> value, evidence key -> sentence, error) of one ``/label`` result."""
    if item.get("error"):
        err = item["error"]
        return {}, {}, f"{err.get('code')}: {err.get('message')}"
    labels: dict[str, float | None] = {}
    for column, raw in (item.get("labels") or {}).items():
        key = spec.key_for(column)
        if key is not None:
            labels[key] = spec.value(raw)
    for key in spec.keys:
        labels.setdefault(key, 0.0 if spec.name == "ctrate" else None)
    evidence = {spec.key_for(c): s for c, s in (item.get("evidence") or {}).items()
                if spec.key_for(c) and s}
    return labels, evidence, None


def layout_table(spec: ReviewTask, results: pd.DataFrame) -> pd.DataFrame:
    """Finished rows of ``results`` in the task's label-file layout."""
    ok = results[results["error"].isna()]
    rows = [json.loads(v) for v in ok["labels"]]
    table = pd.DataFrame(rows, columns=list(spec.keys)).astype("float64")
    table.insert(0, spec.id_name, ok["report_id"].tolist())
    table = table.rename(columns=spec.names)
    if spec.name == "ctrate":
        table[spec.header()] = table[spec.header()].fillna(0).astype("int64")
    return table


def _post(client, url: str, body: dict, headers: dict) -> tuple[list | None, str | None]:
    import httpx

    try:
        r = client.post(url, json=body, headers=headers)
    except httpx.HTTPError as exc:
        return None, f"backend_error: labeler not reachable ({type(exc).__name__})"
    if r.status_code != 200:
        try:
            detail = r.json().get("detail")
        except ValueError:
            detail = r.text[:200]
        return None, f"backend_error: HTTP {r.status_code}: {detail}"
    return r.json()["results"], None


def label_upload(job_dir: str, base_url: str, task: str, labelers: list[dict],
                 chunk: int = 32, timeout_s: float = 300.0) -> dict[str, Any]:
    import httpx

    from ctray.io.manifest import job_manifest
    from ctray.serving.auth import expected_token

    started = time.time()
    folder = Path(job_dir)
    spec = TASKS[task]
    reports = pd.read_parquet(folder / REPORTS)
    total = len(reports) * len(labelers)
    progress = {"status": "running", "task": task, "reports": len(reports), "total": total,
                "done": 0, "failed": 0, "labelers": {l["name"]: {"done": 0, "failed": 0}
                                                     for l in labelers},
                "started": started, "message": None}
    write_json(folder / PROGRESS, progress)
    token = expected_token()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with httpx.Client(base_url=base_url, timeout=timeout_s) as client:
            for labeler in labelers:
                name, done = labeler["name"], folder / f"results_{labeler['name']}.parquet"
                counts = progress["labelers"][name]
                if done.exists():  # resume: this labeler finished in an earlier run
                    prev = pd.read_parquet(done, columns=["error"])
                    counts.update(done=len(prev), failed=int(prev["error"].notna().sum()))
                    progress["done"] += len(prev)
                    progress["failed"] += counts["failed"]
                    continue
                rows = []
                for lo in range(0, len(reports), chunk):
                    part = reports.iloc[lo:lo + chunk]
                    body = {"texts": part["text"].tolist(), "ids": part["report_id"].tolist()}
                    if labeler.get("evidence"):
                        body["include_evidence"] = True
                    results, failure = _post(client, f"{labeler['route']}/label", body, headers)
                    for i, rid in enumerate(body["ids"]):
                        if failure is not None:
                            labels, evidence, error = {}, {}, failure
                        else:
                            labels, evidence, error = normalise_item(spec, results[i])
                        rows.append({"report_id": rid, "labels": json.dumps(labels),
                                     "evidence": json.dumps(evidence), "error": error})
                        counts["failed"] += error is not None
                        progress["failed"] += error is not None
                    counts["done"] += len(part)
                    progress["done"] += len(part)
                    write_json(folder / PROGRESS, progress)
                results = pd.DataFrame(rows, columns=["report_id", "labels", "evidence", "error"])
                layout_table(spec, results).to_csv(folder / f"labels_{name}.csv", index=False)
                failed = results[results["error"].notna()]
                failed[["report_id", "error"]].to_csv(folder / f"errors_{name}.csv", index=False)
                results.to_parquet(done.with_suffix(".tmp"), index=False)
                os.replace(done.with_suffix(".tmp"), done)
        everything_failed = progress["failed"] == total and total > 0
        progress["status"] = "failed" if everything_failed else "finished"
        if everything_failed:
            progress["message"] = "every report failed; see the errors files"
    except Exception as exc:  # noqa: BLE001 - the page shows the job as failed
        progress.update(status="failed", message=f"{type(exc).__name__}: {str(exc)[:300]}")
    progress["wall_time_s"] = round(time.time() - started, 3)
    write_json(folder / PROGRESS, progress)
    manifest = job_manifest("review-label-upload", str(folder),
                            {"task": task, "labelers": labelers, "chunk": chunk},
                            time.time() - started, status=progress["status"],
                            reports=len(reports), failed=progress["failed"],
                            per_labeler=progress["labelers"])
    write_json(folder / "manifest.json", manifest)
    return progress
