"""Runner behaviour: per-row errors, resume, retry-failed, manifest, kill-and-resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import psutil
import pytest

from ctray.io.corpus import CorpusConfig, read_corpus
from ctray.pipeline.runner import ConfigChangedError, RunSpec, run_pipeline
from pipeline_helpers import BatchOrder, CountingLength, processed_ids

REPO = Path(__file__).resolve().parents[1]


def write_corpus(path: Path, n: int, extra: bytes = b"") -> Path:
    lines = [b"VolumeName,ClinicalInformation_EN,Technique_EN,Findings_EN,Impressions_EN"]
    for i in range(n):
        lines.append(f"r{i:03d},info,technique,Finding number {i} {'x' * i}.,Impression {i}".encode())
    path.write_bytes(b"\n".join(lines) + b"\n" + extra)
    return path


def results(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "results")


def errors(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "errors")


def test_row_errors_do_not_stop_the_job(ray_local, tmp_path):
    csv = write_corpus(tmp_path / "c.csv", 12)
    out, log = tmp_path / "out", tmp_path / "log"
    stage = CountingLength(str(log), fail_ids={"r003", "r007"})
    summary = run_pipeline(read_corpus(CorpusConfig(path=str(csv))), [stage],
                           RunSpec(job="t", output=str(out)))
    assert (summary.ok, summary.failed) == (10, 2)
    res = results(out)
    assert sorted(res["report_id"]) == [f"r{i:03d}" for i in range(12) if i not in (3, 7)]
    # The computed column is right for every finished row.
    expected = {f"r{i:03d}": len(f"Finding number {i} {'x' * i}.\n\nImpression {i}") for i in range(12)}
    assert all(res["n_chars"].astype(int) == res["report_id"].map(expected))
    err = errors(out)
    assert sorted(err["report_id"]) == ["r003", "r007"]
    assert set(err["stage"]) == {"counting_length"}
    assert all("simulated failure" in e for e in err["error"])
    assert set(err["attempt"]) == {1}
    replay = json.loads(err.sort_values("report_id")["input_json"].iloc[0])
    assert replay["report_id"] == "r003" and replay["findings"].startswith("Finding number 3")


def test_an_in_order_stage_runs_its_batches_in_input_order(ray_local, tmp_path):
    """The grounding stage keeps the last scan it read across batches; that only saves a
    read if its one actor runs the batches in the order of the (sorted) input."""
    csv = write_corpus(tmp_path / "c.csv", 40)
    spec = RunSpec(job="t", output=str(tmp_path / "out"), rows_per_block=2, writer_batch_size=2)
    assert run_pipeline(read_corpus(CorpusConfig(path=str(csv))), [BatchOrder(in_order=True)],
                        spec).ok == 40
    res = results(tmp_path / "out").sort_values("report_id")
    assert res["batch_seq"].is_monotonic_increasing, res["batch_seq"].tolist()
    assert res["batch_seq"].nunique() == 20


def test_resume_skips_finished_rows_and_retry_failed_reprocesses_only_failures(ray_local, tmp_path):
    csv = write_corpus(tmp_path / "c.csv", 10)
    out, log = tmp_path / "out", tmp_path / "log"
    log.mkdir()
    (log / "FAIL-r002").touch()
    spec = RunSpec(job="t", output=str(out))
    run_pipeline(read_corpus(CorpusConfig(path=str(csv))), [CountingLength(str(log))], spec)
    first = Counter(processed_ids(str(log)))
    assert set(first) == {f"r{i:03d}" for i in range(10)}

    # A plain rerun computes nothing: finished and failed rows are both skipped.
    again = run_pipeline(read_corpus(CorpusConfig(path=str(csv))), [CountingLength(str(log))], spec)
    assert (again.ok, again.failed, again.skipped) == (0, 0, 10)
    assert Counter(processed_ids(str(log))) == first

    # The cause is fixed; --retry-failed processes exactly the failed row.
    (log / "FAIL-r002").unlink()
    retry = RunSpec(job="t", output=str(out), retry_failed=True)
    summary = run_pipeline(read_corpus(CorpusConfig(path=str(csv))), [CountingLength(str(log))], retry)
    assert (summary.ok, summary.failed) == (1, 0)
    after = Counter(processed_ids(str(log)))
    assert after - first == Counter({"r002": 1})
    res = results(out)
    assert sorted(res["report_id"]) == [f"r{i:03d}" for i in range(10)]
    assert res["report_id"].is_unique
    # Nothing left to retry.
    nothing = run_pipeline(read_corpus(CorpusConfig(path=str(csv))), [CountingLength(str(log))], retry)
    assert (nothing.ok, nothing.failed) == (0, 0)


def test_retry_failed_records_a_second_attempt(ray_local, tmp_path):
    csv = write_corpus(tmp_path / "c.csv", 4)
    out, log = tmp_path / "out", tmp_path / "log"
    stage = CountingLength(str(log), fail_ids={"r001"})
    run_pipeline(read_corpus(CorpusConfig(path=str(csv))), [stage], RunSpec(job="t", output=str(out)))
    run_pipeline(read_corpus(CorpusConfig(path=str(csv))), [stage],
                 RunSpec(job="t", output=str(out), retry_failed=True))
    err = errors(out)
    assert sorted(err["attempt"]) == [1, 2]
    assert set(err["report_id"]) == {"r001"}


def test_manifest_records_counts_versions_and_fingerprint(ray_local, tmp_path):
    csv = write_corpus(tmp_path / "c.csv", 5)
    out, log = tmp_path / "out", tmp_path / "log"
    spec = RunSpec(job="t", output=str(out), fingerprint={"threshold": 1},
                   config={"backend": {"api_key": "sk-secret", "api_key_env": "OPENAI_API_KEY"}})
    run_pipeline(read_corpus(CorpusConfig(path=str(csv))), [CountingLength(str(log), fail_ids={"r000"})], spec)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["results_rows"] == 4
    assert manifest["counts"]["error_rows"] == 1
    assert manifest["runs"][0]["failed_by_stage"] == {"counting_length": 1}
    assert manifest["versions"]["ray"] == "2.60.0"
    assert manifest["wall_time_s"] > 0
    text = (out / "manifest.json").read_text()
    assert "sk-secret" not in text and "OPENAI_API_KEY" in text
    # Same output folder, different result-deciding settings: refused, nothing mixed.
    changed = RunSpec(job="t", output=str(out), fingerprint={"threshold": 2})
    with pytest.raises(ConfigChangedError, match="different configuration"):
        run_pipeline(read_corpus(CorpusConfig(path=str(csv))), [CountingLength(str(log))], changed)


def test_duplicate_ids_are_rejected_with_the_id(ray_local, tmp_path):
    csv = write_corpus(tmp_path / "c.csv", 3, extra=b"r001,info,t,dup,dup\n")
    with pytest.raises(ValueError, match=r"duplicate row keys.*r001"):
        run_pipeline(read_corpus(CorpusConfig(path=str(csv))), [CountingLength(str(tmp_path / "l"))],
                     RunSpec(job="t", output=str(tmp_path / "out")))


KILL_SCRIPT = textwrap.dedent("""
    import sys, ray
    sys.path[:0] = [{tests!r}, {repo!r}]
    ray.init(num_cpus=2, include_dashboard=False,
             runtime_env={{"env_vars": {{"PYTHONPATH": {tests!r} + ":" + {repo!r}}}}})
    from ctray.io.corpus import CorpusConfig, read_corpus
    from ctray.pipeline.runner import RunSpec, run_pipeline
    from pipeline_helpers import CountingLength
    ds = read_corpus(CorpusConfig(path={csv!r}))
    run_pipeline(ds, [CountingLength({log!r}, delay_s=0.25, batch_size=2)],
                 RunSpec(job="t", output={out!r}, writer_batch_size=2))
""")


@pytest.mark.slow
def test_kill_and_resume_without_duplicates_or_recomputation(ray_local, tmp_path):
    csv = write_corpus(tmp_path / "c.csv", 40)
    out, log = tmp_path / "out", tmp_path / "log"
    script = tmp_path / "job.py"
    script.write_text(KILL_SCRIPT.format(tests=str(REPO / "tests"), repo=str(REPO), csv=str(csv),
                                         log=str(log), out=str(out)))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([sys.executable, str(script)], start_new_session=True, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            done = list((out / "results").glob("part-*.parquet")) if (out / "results").exists() else []
            if len(done) >= 2 or proc.poll() is not None:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the job finished before it could be killed"
    finally:
        # Preemption: the driver, its Ray head processes and workers all die at once.
        family = psutil.Process(proc.pid).children(recursive=True)
        os.killpg(proc.pid, signal.SIGKILL)
        for child in family:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        proc.wait()
        psutil.wait_procs(family, timeout=10)
    finished_before = set(results(out)["report_id"])
    assert 0 < len(finished_before) < 40
    processed_before = Counter(processed_ids(str(log)))
    # The killed run is in the manifest, unfinished, with the fingerprint its rows
    # were written under: a rerun with another configuration is refused.
    killed = json.loads((out / "manifest.json").read_text())
    assert [r["status"] for r in killed["runs"]] == ["unfinished"]
    changed = RunSpec(job="t", output=str(out), fingerprint={"threshold": 0.6})
    with pytest.raises(ConfigChangedError, match="different configuration"):
        run_pipeline(read_corpus(CorpusConfig(path=str(csv))), [CountingLength(str(log))], changed)
    assert Counter(processed_ids(str(log))) == processed_before

    summary = run_pipeline(read_corpus(CorpusConfig(path=str(csv))), [CountingLength(str(log))],
                           RunSpec(job="t", output=str(out)))
    res = results(out)
    assert res["report_id"].is_unique
    assert set(res["report_id"]) == {f"r{i:03d}" for i in range(40)}
    assert summary.skipped == len(finished_before)
    # Finished rows were not computed again; the rest exactly once more.
    recomputed = Counter(processed_ids(str(log))) - processed_before
    assert not (set(recomputed) & finished_before)
    assert set(recomputed) == {f"r{i:03d}" for i in range(40)} - finished_before
    assert all(n == 1 for n in recomputed.values())
    runs = json.loads((out / "manifest.json").read_text())["runs"]
    assert [r["status"] for r in runs] == ["unfinished", "finished"]


def test_duplicate_id_check_shuffles_into_one_partition_per_cluster_cpu(ray_local, monkeypatch):
    """Ray Data's default 200 hash partitions are 200 one-CPU reduce tasks: on a 4-CPU
    cluster they held a 266-row translate job for minutes before its first row."""
    import ray.data

    from ctray.io.corpus import find_duplicate_ids

    seen = []
    groupby = ray.data.Dataset.groupby

    def spy(self, key, *args, **kwargs):
        seen.append(kwargs.get("num_partitions"))
        return groupby(self, key, *args, **kwargs)

    monkeypatch.setattr(ray.data.Dataset, "groupby", spy)
    ds = ray.data.from_pandas(pd.DataFrame({"report_id": ["a", "b", "a", "c"]}))
    dups = find_duplicate_ids(ds)
    assert [(d["report_id"], d["count()"]) for d in dups] == [("a", 2)]
    assert seen == [int(ray_local.cluster_resources()["CPU"])]
