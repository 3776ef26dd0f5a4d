"""Chained passes (ctray.pipeline.chain): resume, retry across passes, the unchanged-input
shortcut and the job's top manifest, on a real two-pass chain over Ray Data."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from ctray.config import JobConfig, RunConfig
from ctray.io.corpus import CorpusConfig, read_corpus
from ctray.io.output import OutputLayout
from ctray.pipeline.chain import run_pass, write_chain_manifest
from pipeline_helpers import CountingLength, processed_ids
from test_pipeline import write_corpus


def _upstream(folder: str):
    import ray

    files = OutputLayout(folder).parquet_files("results")
    return ray.data.read_parquet(files).select_columns(["report_id", "text"]) if files else None


def _chain(csv: Path, out: Path, logs: tuple[Path, Path], retry: bool = False):
    cfg = JobConfig(job="chain-test", run=RunConfig(output=str(out), retry_failed=retry))
    first = run_pass(cfg, "first", [CountingLength(str(logs[0]))],
                     lambda: read_corpus(CorpusConfig(path=str(csv))), output=f"{out}/first")
    second = run_pass(cfg, "second", [CountingLength(str(logs[1]))],
                      lambda: _upstream(f"{out}/first"), output=f"{out}/second",
                      upstream=[f"{out}/first"], check_duplicate_keys=False)
    return cfg, first, second


def test_chain_resumes_retries_across_passes_and_skips_unchanged_passes(ray_local, tmp_path):
    csv = write_corpus(tmp_path / "c.csv", 8)
    out, logs = tmp_path / "out", (tmp_path / "log1", tmp_path / "log2")
    logs[0].mkdir()
    (logs[0] / "FAIL-r002").touch()  # r002 fails in the first pass until the marker goes

    _, first, second = _chain(csv, out, logs)
    assert (first.ok, first.failed) == (7, 1)
    assert (second.ok, second.failed) == (7, 0)
    assert sorted(processed_ids(str(logs[1]))) == [f"r{i:03d}" for i in range(8) if i != 2]
    signature = json.loads((out / "second" / "manifest.json").read_text())["input_signature"]

    # A rerun: the first pass resumes (nothing to do); the second pass's inputs are
    # unchanged, so it is skipped without running (no row is processed again).
    _, again_first, again_second = _chain(csv, out, logs)
    assert (again_first.ok, again_first.skipped) == (0, 8)
    assert again_second.run_id == "unchanged" and again_second.skipped == 7
    assert len(processed_ids(str(logs[1]))) == 7

    # The cause is gone; --retry-failed: the first pass replays r002, and the second
    # pass (no failure of its own to replay) then resumes and picks r002 up.
    (logs[0] / "FAIL-r002").unlink()
    cfg, retry_first, retry_second = _chain(csv, out, logs, retry=True)
    assert (retry_first.ok, retry_first.failed) == (1, 0)
    assert (retry_second.ok, retry_second.run_id != "unchanged") == (1, True)
    done = Counter(processed_ids(str(logs[1])))
    assert sorted(done) == [f"r{i:03d}" for i in range(8)] and set(done.values()) == {1}
    manifest = json.loads((out / "second" / "manifest.json").read_text())
    assert manifest["input_signature"] != signature  # new upstream rows, new signature
    assert [r["mode"] for r in manifest["runs"]] == ["run", "retry_failed", "run"]

    # The job's top manifest: the common keys and one record per pass.
    top = write_chain_manifest(cfg, 0.0, str(out), {"first": retry_first,
                                                    "second": retry_second})
    assert top["job"] == "chain-test" and top["config_hash"] and top["versions"]["ctray"]
    assert top["passes"]["first"]["results_rows"] == 8
    assert top["passes"]["first"]["error_rows"] == 1  # the failed attempt stays recorded
    assert top["passes"]["second"]["this_run"]["ok"] == 1
    assert json.loads((out / "manifest.json").read_text())["passes"].keys() == {"first", "second"}


def test_chain_pass_without_upstream_results_is_skipped(ray_local, tmp_path):
    cfg = JobConfig(job="chain-test", run=RunConfig(output=str(tmp_path / "out")))
    summary = run_pass(cfg, "second", [CountingLength(str(tmp_path / "log"))],
                       lambda: _upstream(str(tmp_path / "out" / "first")),
                       output=str(tmp_path / "out" / "second"),
                       upstream=[str(tmp_path / "out" / "first")])
    assert summary is None and not (tmp_path / "log").exists()
