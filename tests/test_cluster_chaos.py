"""Node loss on a real 3-node Ray cluster (head without task CPUs + 2 workers).

Jobs go through the Job Submission API of the test cluster's dashboard, as users
run them. Worker nodes are killed (raylet and workers, no drain) when the job's
output shows progress, not after fixed sleeps, so the kills land mid-run on a slow
or busy machine too. A killed node is replaced by a fresh one, as the autoscaler
replaces a preempted spot node. The job then finishes by itself, or the documented
rerun (the same command) finishes it; the outputs must hold every input id exactly
once, no partial Parquet file where readers look, and manifest counts equal to
the data.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from cluster_fixtures import LocalCluster, parquet_count, wait_for, wait_job
from conftest import SHARED_DATA

REPO = Path(__file__).resolve().parents[1]
# Minutes each on 2 cores (node starts and submitted jobs dominate, not rows): outside
# CI's budget until the cluster modules share one cluster (docs/cluster.md).
pytestmark = [pytest.mark.slow, pytest.mark.extended]
# CT-RATE reports per chaos run (CI's 2 cores); benchmarks/cluster_chaos.py runs all 1,564.
REPORTS = int(os.environ.get("CTRAY_CHAOS_REPORTS", "240"))


@pytest.fixture(scope="module")
def cluster():
    c = LocalCluster(workers=2, worker_cpus=2)
    yield c
    c.shutdown()


def ct_rate_reports() -> Path:
    path = SHARED_DATA / "ct-rate" / "validation_reports.csv"
    return path if path.exists() else REPO / "ctray" / "data" / "sample_reports_en.csv"


def read_folder(folder: Path) -> pd.DataFrame:
    """Every finished Parquet file, each one parsed in full (a partial file raises)."""
    frames = []
    for p in sorted(folder.glob("*.parquet")):
        if p.name.startswith("."):
            continue  # in-flight temp names: readers (Arrow, Ray, ctray) skip them
        frames.append(pq.read_table(p).to_pandas().assign(_file=p.name))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def check_exactly_once(out: Path, ids: list[str], keys=("report_id",)):
    results, errors = read_folder(out / "results"), read_folder(out / "errors")
    keys = list(keys)
    done = results[keys] if len(results) else pd.DataFrame(columns=keys)
    failed = errors[keys].drop_duplicates() if len(errors) else pd.DataFrame(columns=keys)
    assert not done.duplicated().any(), done[done.duplicated(keep=False)]
    # A row that failed in an early attempt and finished later is done, not lost.
    both = pd.concat([done, failed]).drop_duplicates()
    assert len(both) == len(ids)
    assert sorted(map(tuple, both.astype(str).to_numpy())) == sorted(ids)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["results_rows"] == len(results)
    assert manifest["counts"]["error_rows"] == len(errors)
    assert manifest["runs"][-1]["status"] == "finished"
    # Pandas/Arrow read the folder the way users do (temp files are skipped).
    assert len(pd.read_parquet(out / "results")) == len(results)
    return results, errors, manifest


def run_with_kills(cluster: LocalCluster, argv: list[str], progress, kill_at: list[int],
                   timeout: float = 240):
    """Submit, kill a worker node each time ``progress()`` reaches the next mark,
    rerun the same command until it succeeds. Returns (kills, runs, seconds)."""
    client = cluster.job_client()
    started = time.time()
    job = cluster.submit(client, argv)
    kills = 0
    for mark in kill_at:
        def reached():
            status = str(client.get_job_status(job)).split(".")[-1]
            return progress() >= mark or status in ("SUCCEEDED", "FAILED", "STOPPED")
        wait_for(reached, timeout, f"progress {mark}")
        if str(client.get_job_status(job)).split(".")[-1] != "RUNNING":
            break
        # Oldest node first: after two kills, both original workers (every stage
        # actor and write task placed before the first kill) have died.
        cluster.kill_worker(cluster.workers[0])
        kills += 1
    runs = 1
    status = wait_job(client, job, timeout)
    logs = client.get_job_logs(job)
    while status != "SUCCEEDED":
        Path(os.environ.get("CTRAY_CHAOS_LOG", "/dev/null")).write_text(logs)
        assert runs < 3, logs[-3000:]
        runs += 1  # the documented recovery: run the same command again
        job = cluster.submit(client, argv)
        status = wait_job(client, job, timeout)
        logs = client.get_job_logs(job)
    return kills, runs, time.time() - started, logs


def test_label_findings_rules_survives_two_node_kills(cluster, tmp_path):
    from ctray.tasks.findings.rules import RuleLabeler
    from ctray.tasks.findings.schema import FINDING_COLUMNS

    source = pd.read_csv(ct_rate_reports()).head(REPORTS)
    # A file of its own, not --limit: Ray Data's limit takes whichever rows arrive first.
    corpus = tmp_path / "reports.csv"
    source.to_csv(corpus, index=False)
    out = tmp_path / "labels"
    argv = ["jobs/label_findings.py", "--config", "configs/label_findings.yaml",
            "--output", str(out), "--set", f"corpus.path={corpus}",
            "--set", "run.writer_batch_size=20", "--set", "run.rows_per_block=10",
            "--set", "rules.batch_size=10"]
    n_files = -(-len(source) // 20)
    kills, runs, seconds, logs = run_with_kills(
        cluster, argv, lambda: parquet_count(out / "results"),
        kill_at=[2, max(4, n_files // 3)])  # 240 reports: 12 files, kills at 2 and 4
    print(f"label-findings: {len(source)} reports, {kills} kills, {runs} runs, {seconds:.1f}s")
    assert kills == 2, "the job finished before the kills: make it bigger"

    results, errors, manifest = check_exactly_once(out, [(i,) for i in source["VolumeName"]])
    assert len(errors) == 0
    # The labels are those of the rules, computed here on the same text: no row of
    # one report carries another's labels after retries.
    labeler = RuleLabeler("auto")
    sample = results.sample(min(40, len(results)), random_state=0)
    for _, row in sample.iterrows():
        expected = labeler.label(row["text"]).labels
        assert {c: int(row[c]) for c in FINDING_COLUMNS} == expected, row["report_id"]
    last = manifest["runs"][-1]
    assert last["ok"] + last["failed"] + last["skipped"] == len(source)


def snapshot(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.parquet")
            if not p.name.startswith(".")} if folder.exists() else {}


def test_translate_two_passes_survive_node_kills_and_a_killed_driver(cluster, tmp_path):
    """Two chained LLM passes (fake backend): two worker kills during pass 1, then the
    driver itself is killed; resubmitting the same command resumes both passes
    without recomputing a written row."""
    source = pd.read_csv(ct_rate_reports()).head(REPORTS // 3)  # 80: ~160 section rows
    corpus = tmp_path / "reports.csv"
    source.to_csv(corpus, index=False)
    out = tmp_path / "translate"
    argv = ["jobs/translate.py", "--config", "configs/translate.yaml", "--output", str(out),
            "--set", f"corpus.path={corpus}", "--backend", "fake",
            "--set", "backend.fake_responder=test_translate:phrasebook_translator",
            "--set", "backend.batch_size=5", "--set", "run.writer_batch_size=10",
            "--set", "run.rows_per_block=5"]
    expected = sorted((r.VolumeName, s) for r in source.itertuples()
                      for s, col in (("findings", "Findings_EN"), ("impressions", "Impressions_EN"))
                      if isinstance(getattr(r, col), str) and getattr(r, col).strip())
    client = cluster.job_client()
    started = time.time()
    job = cluster.submit(client, argv)
    pass1 = out / "translate" / "results"

    def running() -> bool:
        return str(client.get_job_status(job)).split(".")[-1] in ("PENDING", "RUNNING")

    kills = 0
    for mark in (2, 5):
        try:
            wait_for(lambda: parquet_count(pass1) >= mark or not running(), 240, f"{mark} files")
        except TimeoutError:
            Path(os.environ.get("CTRAY_CHAOS_LOG", "/dev/null")).write_text(
                client.get_job_logs(job))
            raise
        if not running():
            break
        cluster.kill_worker(cluster.workers[0])
        kills += 1
    wait_for(lambda: parquet_count(pass1) >= 9 or not running(), 240, "9 files")
    assert running(), client.get_job_logs(job)[-3000:]
    pid = int(client.get_job_info(job).driver_info.pid)
    os.kill(pid, signal.SIGKILL)  # the driver runs on the head: same machine here
    assert wait_job(client, job, 120) == "FAILED"
    time.sleep(3)  # tasks of the dead driver are cancelled; let stragglers land
    before = {"translate": snapshot(pass1), "back": snapshot(out / "back_translate" / "results")}
    done_before = sum(pq.read_metadata(pass1 / n).num_rows for n in before["translate"])
    errors_before = sum(pq.read_metadata(p).num_rows
                        for p in (out / "translate" / "errors").glob("*.parquet")
                        if not p.name.startswith("."))

    job = cluster.submit(client, argv)  # the documented recovery: the same command
    status = wait_job(client, job, 300)
    logs = client.get_job_logs(job)
    assert status == "SUCCEEDED", logs[-3000:]
    seconds = time.time() - started
    print(f"translate: {len(expected)} section rows, {kills} node kills + driver kill, "
          f"{seconds:.1f}s")
    assert kills == 2, "pass 1 finished before the kills: make it bigger"

    results, errors, manifest = check_exactly_once(out / "translate", expected,
                                                   keys=("report_id", "section"))
    # Nothing written before the driver died was recomputed or rewritten.
    after = snapshot(pass1)
    assert all(after.get(name) == mtime for name, mtime in before["translate"].items())
    this_run = manifest["counts"]["this_run"]
    assert this_run["skipped"] == done_before + errors_before
    assert this_run["ok"] + this_run["failed"] == len(expected) - this_run["skipped"]
    assert (results["translation"].str.len() > 0).all()
    # Pass 2 translated every finished row of pass 1 back, once.
    back_keys = sorted(map(tuple, results[["report_id", "section"]].astype(str).to_numpy()))
    check_exactly_once(out / "back_translate", back_keys, keys=("report_id", "section"))
