"""The labeling and review page (``serve/review.yaml``, route ``/review``).

A Ray Serve deployment that is also a FastAPI ingress, beside the labeling apps: same
process model, 127.0.0.1 by default, the same bearer token (``CTRAY_SERVE_TOKEN``) on
every ``/api`` route. The page itself (``GET /``, plain HTML/JS/CSS shipped in
``ctray/review/static``) and ``/docs`` load no external asset.

- ``POST /api/label``: one pasted report through any deployed labeler (found from
  Serve's application list, or the ``labelers`` argument), labels plus the character
  spans of each label's evidence sentence.
- ``POST /api/jobs``: an uploaded CSV/Parquet corpus labeled by a background Ray task
  (``review_jobs.label_upload``) with progress; downloads in the CheXpert / CT-RATE
  layout.
- ``/api/reviews``: disagreement queues of two labelers (or a labeler and an uploaded
  gold file), reviewers' values in SQLite (``review_store``), gold export, Cohen's kappa.

Bad input gets a 4xx JSON ``{"detail": ...}`` (413 over the size limits, 422 for wrong
columns or values, 400 for unreadable files) and a labeler that does not answer a 503;
nothing is written for a refused request. Report text is never logged.
"""

# No ``from __future__ import annotations``: FastAPI and Serve read the annotations.

import asyncio
import json
import time
import uuid
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import httpx
import pandas as pd
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application

import ctray
from ctray.serving.auth import AUTH, expected_token
from ctray.serving.offline_docs import use_offline_docs
from ctray.review.inputs import read_label_table, read_reports
from ctray.review.uploads import PROGRESS, REPORTS, label_upload, read_json, write_json
from ctray.review.store import ReviewError, ReviewStore, check_reviewer
from ctray.review.label_sets import LABELER_DEPLOYMENTS, TASKS
from ctray.serving.service import log

STATIC = ("index.html", "review.js", "review.css")
EVIDENCE_APPS = ("CxrRulesService", "RuleLabelerService")  # accept include_evidence
GOLD = "gold"


class LabelerRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="the name shown on the page (and in file names)")
    route: str = Field(description="route prefix of the app, e.g. /cxr-rules")
    task: Literal["cxr", "ctrate", "leavs"] = Field(description="what the labeler labels")
    evidence: bool = Field(default=False, description="the app returns evidence sentences")


class ReviewAppArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    work_dir: str = Field(default="~/.ctray/review", description="uploads, job outputs and "
                          "review.db (SQLite) on the replica's node; keep one replica")
    labelers: list[LabelerRef] = Field(
        default_factory=list, description="labelers to offer; empty: every labeling app "
        "Serve runs, found from its application list")
    proxy_url: str | None = Field(default=None, description="where the labeling apps answer; "
                                  "default: this Serve instance's HTTP proxy on 127.0.0.1")
    max_paste_chars: int = Field(default=20_000, ge=1, description="pasted report (413 above)")
    max_upload_bytes: int = Field(default=20_000_000, ge=1, description="uploaded file "
                                  "(413 above)")
    max_upload_rows: int = Field(default=5_000, ge=1, description="reports per uploaded file")
    chunk: int = Field(default=32, ge=1, description="reports per request to a labeler in "
                       "background jobs (at most the labeler's max_items)")


class PasteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: Literal["cxr", "ctrate", "leavs"]
    labeler: str
    text: str


class ReviewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job: str
    a: str = Field(description="a labeler of the job")
    b: str = Field(description="another labeler of the job, or 'gold' (the uploaded gold file)")
    id: str | None = Field(default=None, description="queue id (default: <job>-<a>-<b>)")


class SaveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reviewer: str
    values: dict[str, Any]


def evidence_spans(text: str, evidence: dict[str, str]) -> list[dict[str, Any]]:
    """Character spans of the evidence sentences in ``text``, one per distinct sentence,
    with the label keys it decided (a sentence the labeler normalised and that is
    not found verbatim gets no span; its label row still shows it)."""
    spans: dict[tuple[int, int], list[str]] = {}
    for key, sentence in evidence.items():
        sentence = (sentence or "").strip()
        start = text.find(sentence) if sentence else -1
        if start >= 0:
            spans.setdefault((start, start + len(sentence)), []).append(key)
    return [{"start": s, "end": e, "keys": keys} for (s, e), keys in sorted(spans.items())]


def _static_dir() -> Path:
    return Path(str(resources.files("ctray.review") / "static"))


review_api = use_offline_docs(FastAPI(
    title="ctray labeling and review page", version=ctray.__version__,
    description="Label a pasted or uploaded report with any deployed labeler, review "
                "disagreements, export gold labels. Report text is never logged."))


@review_api.exception_handler(ReviewError)
async def _review_error(request: Request, exc: ReviewError) -> JSONResponse:
    return JSONResponse(status_code=exc.status, content={"detail": str(exc)})


async def _body(request: Request, limit: int) -> bytes:
    """The raw request body, refused (413) as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ReviewError(f"the upload has {int(declared)} bytes; the limit is {limit}", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ReviewError(f"the upload is over the limit of {limit} bytes", 413)
        chunks.append(chunk)
    return b"".join(chunks)


@serve.deployment(max_ongoing_requests=32, max_queued_requests=256,
                  ray_actor_options={"num_cpus": 0.25})
@serve.ingress(review_api)
class ReviewService:
    """One replica: the jobs and review database live on its node's disk."""

    def __init__(self, args: dict | None = None) -> None:
        self.args = ReviewAppArgs.model_validate(args or {})
        self.work = Path(self.args.work_dir).expanduser()
        (self.work / "jobs").mkdir(parents=True, exist_ok=True)
        self.store = ReviewStore(self.work / "review.db")
        self._client = httpx.AsyncClient(timeout=120)
        self._running: dict[str, Any] = {}  # job -> ObjectRef of its background task

    # ------------------------------------------------------------------ labelers

    def _serve_details(self) -> dict:
        from ray.serve.context import _get_global_client

        return _get_global_client().get_serve_details()

    async def _proxy_url(self) -> str:
        if self.args.proxy_url:
            return self.args.proxy_url.rstrip("/")
        details = await asyncio.to_thread(self._serve_details)
        port = (details.get("http_options") or {}).get("port", 8000)
        return f"http://127.0.0.1:{port}"

    async def labelers(self) -> list[dict[str, Any]]:
        """Configured labelers, or every running labeling app Serve knows, with its state."""
        details = await asyncio.to_thread(self._serve_details)
        apps = details.get("applications") or {}
        running = {}
        found = []
        for name, app in apps.items():
            deployments = app.get("deployments") or {}
            status = app.get("status")
            for dep in deployments:
                if dep in LABELER_DEPLOYMENTS:
                    route = app.get("route_prefix")
                    running[route] = status
                    found.append({"name": name, "route": route, "task": LABELER_DEPLOYMENTS[dep],
                                  "evidence": dep in EVIDENCE_APPS})
        chosen = [l.model_dump() for l in self.args.labelers] or sorted(
            found, key=lambda l: (l["task"], l["name"]))
        for lab in chosen:
            lab["status"] = running.get(lab["route"], "NOT_DEPLOYED")
        return chosen

    async def _labeler(self, name: str, task: str | None = None) -> dict[str, Any]:
        match = next((l for l in await self.labelers() if l["name"] == name), None)
        if match is None:
            raise ReviewError(f"no labeler named {name!r} is deployed", 404)
        if task and match["task"] != task:
            raise ReviewError(f"labeler {name!r} labels {match['task']}, not {task}", 422)
        if match["status"] != "RUNNING":
            raise ReviewError(f"labeler {name!r} is not running ({match['status']}); deploy "
                              "its app and try again", 503)
        return match

    def _headers(self) -> dict[str, str]:
        token = expected_token()
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def _call(self, labeler: dict, path: str, body: dict) -> dict:
        url = await self._proxy_url() + labeler["route"].rstrip("/") + path
        try:
            r = await self._client.post(url, json=body, headers=self._headers())
        except httpx.HTTPError as exc:
            raise ReviewError(f"labeler {labeler['name']!r} is not answering "
                              f"({type(exc).__name__}); check `serve status`", 503) from None
        if r.status_code >= 500 or r.status_code == 404:
            raise ReviewError(f"labeler {labeler['name']!r} is down or unreachable (HTTP "
                              f"{r.status_code}); check `serve status`", 503)
        if r.status_code != 200:
            try:
                detail = r.json().get("detail")
            except ValueError:
                detail = r.text[:200]
            raise ReviewError(f"labeler {labeler['name']!r} refused the report: {detail}",
                              r.status_code if r.status_code < 500 else 502)
        return r.json()

    # ------------------------------------------------------------------ page

    @review_api.get("/", include_in_schema=False)
    async def page(self, request: Request) -> HTMLResponse:
        # Relative URLs (static/, api/, docs) resolve under the app's route prefix,
        # whether the page was opened as /review or /review/.
        base = request.scope.get("root_path", "").rstrip("/") + "/"
        html = (_static_dir() / "index.html").read_text(encoding="utf-8")
        return HTMLResponse(html.replace("{{BASE}}", base))

    @review_api.get("/static/{name}", include_in_schema=False)
    async def static(self, name: str) -> FileResponse:
        if name not in STATIC:
            raise HTTPException(404, detail=f"no file {name!r}")
        kind = {"js": "text/javascript", "css": "text/css", "html": "text/html"}[name.split(".")[-1]]
        return FileResponse(_static_dir() / name, media_type=f"{kind}; charset=utf-8")

    @review_api.get("/healthz")
    async def healthz(self) -> dict:
        self.store.queues()
        return {"status": "ok"}

    @review_api.get("/api/labelers", dependencies=AUTH)
    async def api_labelers(self) -> dict:
        labelers = await self.labelers()
        tasks = [{"name": k, "title": t.title} for k, t in TASKS.items()]
        if any(l["task"] == "leavs" for l in labelers):
            tasks.append({"name": "leavs", "title": "Abdominal CT: LEAVS (LLM)"})
        return {"labelers": labelers, "tasks": tasks,
                "limits": {"max_paste_chars": self.args.max_paste_chars,
                           "max_upload_bytes": self.args.max_upload_bytes,
                           "max_upload_rows": self.args.max_upload_rows}}

    # ------------------------------------------------------------------ paste

    @review_api.post("/api/label", dependencies=AUTH)
    async def api_label(self, body: PasteRequest, request: Request) -> dict:
        started = time.perf_counter()
        if not body.text.strip():
            raise ReviewError("paste a report first: the text is empty", 422)
        if len(body.text) > self.args.max_paste_chars:
            raise ReviewError(f"the report has {len(body.text)} characters; the limit is "
                              f"{self.args.max_paste_chars}", 413)
        labeler = await self._labeler(body.labeler, body.task)
        if body.task == "leavs":
            answer = await self._call(labeler, "/report", {"text": body.text})
            rows = [{"key": f"{o['organ']} / {t}", "name": f"{o['organ']}: {t}", "value": v,
                     "evidence": None} for o in answer.get("organs", [])
                    for t, v in o["labels"].items()]
            return {"labeler": labeler["name"], "model": answer.get("model"), "rows": rows,
                    "spans": [], "error": None}
        from ctray.review.uploads import normalise_item

        req = {"texts": [body.text], "ids": ["pasted"]}
        if labeler["evidence"]:
            req["include_evidence"] = True
        answer = await self._call(labeler, "/label", req)
        spec = TASKS[body.task]
        item = answer["results"][0]
        labels, evidence, error = normalise_item(spec, item)
        rows = [{"key": k, "name": spec.names[k], "value": labels.get(k),
                 "evidence": evidence.get(k)} for k in spec.keys] if error is None else []
        log.info("review paste labeler=%s chars=%d ms=%.1f", labeler["name"], len(body.text),
                 (time.perf_counter() - started) * 1000)
        return {"labeler": labeler["name"], "model": answer.get("model"), "rows": rows,
                "spans": evidence_spans(body.text, evidence), "error": error}

    # ------------------------------------------------------------------ jobs

    def _job_dir(self, job: str) -> Path:
        folder = self.work / "jobs" / job
        if not job.isalnum() or not (folder / REPORTS).exists():
            raise ReviewError(f"no job {job!r}", 404)
        return folder

    @review_api.post("/api/jobs", dependencies=AUTH)
    async def api_jobs(self, request: Request, task: Literal["cxr", "ctrate"] = Query(...),
                       labelers: str = Query(..., description="comma-separated labeler names"),
                       filename: str = Query("upload.csv")) -> dict:
        names = [n.strip() for n in labelers.split(",") if n.strip()]
        if not names or len(set(names)) != len(names) or GOLD in names:
            raise ReviewError("choose one or more different labelers (not 'gold')", 422)
        chosen = [await self._labeler(n, task) for n in names]
        data = await _body(request, self.args.max_upload_bytes)
        reports = await asyncio.to_thread(read_reports, data, filename,
                                          self.args.max_upload_rows, self.args.max_paste_chars)
        job = uuid.uuid4().hex[:12]
        folder = self.work / "jobs" / job
        folder.mkdir(parents=True)
        write_json(folder / "job.json", {"task": task, "labelers": names, "filename": filename,
                                         "created": time.time()})
        write_json(folder / PROGRESS, {"status": "queued", "task": task, "done": 0,
                                       "total": len(reports) * len(names), "failed": 0,
                                       "reports": len(reports)})
        reports.to_parquet(folder / REPORTS, index=False)  # last: marks the job as complete
        self._launch(folder, task, chosen, await self._proxy_url())
        return {"job": job, "reports": len(reports), "labelers": names}

    def _launch(self, folder: Path, task: str, labelers: list[dict], base_url: str) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from ctray.io.columns import LIGHT_TASK

        # On this node: the job folder is on its disk.
        remote = ray.remote(label_upload).options(
            **LIGHT_TASK, max_retries=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
                ray.get_runtime_context().get_node_id(), soft=False))
        self._running[folder.name] = remote.remote(str(folder), base_url, task, labelers,
                                                   self.args.chunk)

    @review_api.get("/api/jobs/{job}", dependencies=AUTH)
    async def api_job(self, job: str) -> dict:
        folder = self._job_dir(job)
        meta = read_json(folder / "job.json")
        progress = read_json(folder / PROGRESS)
        downloads = [n for n in meta["labelers"] if (folder / f"labels_{n}.csv").exists()]
        return {"job": job, **progress, **meta, "per_labeler": progress.get("labelers", {}),
                "downloads": downloads,
                "gold": (folder / "gold.json").exists()}

    @review_api.get("/api/jobs/{job}/labels/{labeler}", dependencies=AUTH)
    async def api_job_labels(self, job: str, labeler: str, kind: str = "labels") -> Response:
        folder = self._job_dir(job)
        meta = read_json(folder / "job.json")
        if labeler not in meta["labelers"] or kind not in ("labels", "errors"):
            raise ReviewError(f"job {job} has no {kind} of {labeler!r}", 404)
        path = folder / f"{kind}_{labeler}.csv"
        if not path.exists():
            raise ReviewError(f"job {job}: {labeler!r} has not finished yet", 409)
        return FileResponse(path, media_type="text/csv",
                            filename=f"{kind}_{labeler}_{job}.csv")

    @review_api.post("/api/jobs/{job}/gold", dependencies=AUTH)
    async def api_job_gold(self, job: str, request: Request,
                           filename: str = Query("gold.csv")) -> dict:
        folder = self._job_dir(job)
        meta = read_json(folder / "job.json")
        data = await _body(request, self.args.max_upload_bytes)
        gold = await asyncio.to_thread(read_label_table, data, filename, TASKS[meta["task"]],
                                       self.args.max_upload_rows)
        ids = set(pd.read_parquet(folder / REPORTS, columns=["report_id"])["report_id"])
        matched = len(ids & set(gold))
        if not matched:
            raise ReviewError(f"{filename}: no id matches a report of job {job}", 422)
        write_json(folder / "gold.json", gold)
        return {"job": job, "gold_reports": len(gold), "matched": matched}

    # ------------------------------------------------------------------ reviews

    def _job_labels(self, folder: Path, name: str) -> tuple[dict, dict]:
        if name == GOLD:
            if not (folder / "gold.json").exists():
                raise ReviewError("upload a gold file for this job first", 409)
            return read_json(folder / "gold.json"), {}
        path = folder / f"results_{name}.parquet"
        if not path.exists():
            raise ReviewError(f"{name!r} has not labeled this job (or has not finished)", 409)
        table = pd.read_parquet(path)
        table = table[table["error"].isna()]
        return ({r: json.loads(v) for r, v in zip(table["report_id"], table["labels"])},
                {r: json.loads(v) for r, v in zip(table["report_id"], table["evidence"])})

    @review_api.post("/api/reviews", dependencies=AUTH)
    async def api_create_review(self, body: ReviewRequest) -> dict:
        folder = self._job_dir(body.job)
        meta = read_json(folder / "job.json")
        if body.a == body.b:
            raise ReviewError("compare two different label sets", 422)
        for name in (body.a, body.b):
            if name != GOLD and name not in meta["labelers"]:
                raise ReviewError(f"job {body.job} has no labeler {name!r}", 422)
        a, ev_a = self._job_labels(folder, body.a)
        b, ev_b = self._job_labels(folder, body.b)
        reports = pd.read_parquet(folder / REPORTS)
        queue = body.id or f"{body.job}-{body.a}-{body.b}"
        counts = await asyncio.to_thread(self.store.create_queue, queue, meta["task"], body.a,
                                         body.b, reports, a, b, ev_a, ev_b)
        return {"queue": queue, **counts}

    @review_api.get("/api/reviews", dependencies=AUTH)
    async def api_reviews(self) -> dict:
        return {"queues": await asyncio.to_thread(self.store.queues)}

    @review_api.get("/api/reviews/{queue}", dependencies=AUTH)
    async def api_review(self, queue: str, reviewer: str | None = None) -> dict:
        q = await asyncio.to_thread(self.store.queue, queue)
        items = await asyncio.to_thread(self.store.items, queue, reviewer)
        return {**q, "items": items}

    @review_api.get("/api/reviews/{queue}/items/{report_id}", dependencies=AUTH)
    async def api_review_item(self, queue: str, report_id: str,
                              reviewer: str | None = None) -> dict:
        item = await asyncio.to_thread(self.store.item, queue, report_id, reviewer)
        spec = TASKS[item["task"]]
        item["observations"] = [{"key": k, "name": spec.names[k]} for k in spec.keys]
        item["allowed"] = list(spec.allowed)
        item["spans_a"] = evidence_spans(item["text"], item["evidence_a"])
        item["spans_b"] = evidence_spans(item["text"], item["evidence_b"])
        return item

    @review_api.put("/api/reviews/{queue}/items/{report_id}", dependencies=AUTH)
    async def api_review_save(self, queue: str, report_id: str, body: SaveRequest) -> dict:
        check_reviewer(body.reviewer)
        return await asyncio.to_thread(self.store.save, queue, report_id, body.reviewer,
                                       body.values)

    @review_api.get("/api/reviews/{queue}/gold.csv", dependencies=AUTH)
    async def api_review_gold(self, queue: str) -> Response:
        gold = await asyncio.to_thread(self.store.gold, queue)
        if gold.empty:
            raise ReviewError(f"nothing reviewed in {queue!r} yet", 409)
        return Response(gold.to_csv(index=False), media_type="text/csv", headers={
            "Content-Disposition": f'attachment; filename="gold_{queue}.csv"'})

    @review_api.get("/api/reviews/{queue}/kappa", dependencies=AUTH)
    async def api_review_kappa(self, queue: str) -> dict:
        return await asyncio.to_thread(self.store.kappa, queue)


def review_app(args: ReviewAppArgs, **options: Any) -> Application:
    args = args if isinstance(args, ReviewAppArgs) else ReviewAppArgs.model_validate(args or {})
    return ReviewService.options(**options).bind(args.model_dump())


def build_review_app(args: ReviewAppArgs) -> Application:
    return review_app(args)
