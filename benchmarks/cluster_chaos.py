"""Node-loss chaos run: label-findings (rules) on a local 3-node Ray cluster.

Starts a head without task CPUs and two worker nodes on this machine (own ports and
temp dir; never ``ray stop``), submits ``jobs/label_findings.py`` on the CT-RATE
validation reports (../shared/data when present, else the bundled sample) through
the Job Submission API, kills a worker node (raylet and workers at once, replaced by
a fresh node) each time the results folder reaches the next mark, reruns the same
command if the job fails, and prints:

    kills, runs, rows lost, rows duplicated, recovery s per kill (kill -> next new
    Parquet file), wall s

    python benchmarks/cluster_chaos.py [--reports 1564] [--kills 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO)]
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(REPO / "tests"), str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
SHARED_CSV = (Path(os.environ.get("CTRAY_SHARED_DATA", REPO.parent / "shared" / "data"))
              / "ct-rate" / "validation_reports.csv")


def main() -> None:
    from cluster_fixtures import LocalCluster, parquet_count, wait_for, wait_job

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reports", type=int, default=1564)
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--rows-per-file", type=int, default=20)
    args = ap.parse_args()

    csv = SHARED_CSV if SHARED_CSV.exists() else REPO / "ctray" / "data" / "sample_reports_en.csv"
    source = pd.read_csv(csv).head(args.reports)
    work = Path(tempfile.mkdtemp(prefix="ctray-chaos-"))
    corpus, out = work / "reports.csv", work / "labels"
    source.to_csv(corpus, index=False)
    argv = ["jobs/label_findings.py", "--config", "configs/label_findings.yaml",
            "--output", str(out), "--set", f"corpus.path={corpus}",
            "--set", f"run.writer_batch_size={args.rows_per_file}",
            "--set", f"run.rows_per_block={max(1, args.rows_per_file // 2)}"]
    files = -(-len(source) // args.rows_per_file)
    marks = [max(1, files * (i + 1) // (args.kills + 2)) for i in range(args.kills)]

    t0 = time.time()
    cluster = LocalCluster(workers=2, worker_cpus=2)
    print(f"cluster up in {time.time() - t0:.1f}s ({csv.name}, {len(source)} reports)")
    recovery: list[float] = []
    try:
        client = cluster.job_client()
        started = time.time()
        job = cluster.submit(client, argv)

        def status() -> str:
            return str(client.get_job_status(job)).split(".")[-1]

        for mark in marks:
            wait_for(lambda: parquet_count(out / "results") >= mark
                     or status() not in ("PENDING", "RUNNING"), 900, f"{mark} files")
            if status() != "RUNNING":
                break
            cluster.kill_worker(cluster.workers[0])
            killed_at, seen = time.time(), parquet_count(out / "results")
            try:
                wait_for(lambda: parquet_count(out / "results") > seen
                         or status() != "RUNNING", 900, "progress after the kill")
                recovery.append(time.time() - killed_at)
            except TimeoutError:
                pass
        runs, final = 1, wait_job(client, job, 1800)
        while final != "SUCCEEDED" and runs < 3:
            runs += 1
            job = cluster.submit(client, argv)
            final = wait_job(client, job, 1800)
        wall = time.time() - started
    finally:
        cluster.shutdown()

    frames = [pq.read_table(p, columns=["report_id"]).to_pandas()
              for sub in ("results", "errors") for p in (out / sub).glob("*.parquet")
              if not p.name.startswith(".")]
    ids = pd.concat(frames)["report_id"] if frames else pd.Series(dtype=str)
    expected = set(source["VolumeName"].astype(str))
    lost = len(expected - set(ids.astype(str)))
    duplicated = int(ids.duplicated().sum())
    print(f"final status {final}; kills {cluster.killed}; runs {runs}; rows lost {lost}; "
          f"rows duplicated {duplicated}; recovery s per kill "
          f"{[round(r, 1) for r in recovery]}; wall {wall:.1f}s")


if __name__ == "__main__":
    main()
