"""The run fingerprint covers the whole job config (issue 18): every field not on the
small result-neutral allowlist changes it, for every corpus job, and a rerun into a
folder with rows under another value is refused with one `ctray:` line."""

from __future__ import annotations

import ast
import copy
from pathlib import Path

import pandas as pd
import pytest

from ctray.cli import main
from ctray.config import load_config
from ctray.jobs import JOBS, load_job_modules
from ctray.pipeline.job import RESULT_NEUTRAL_NAMES, RESULT_NEUTRAL_PATHS, strip_neutral

REPO = Path(__file__).resolve().parents[1]
load_job_modules()
CORPUS_JOBS = sorted(n for n, s in JOBS.items() if s.row_resumable)

# What each job may leave out of its fingerprint beyond the common allowlist: pinned
# here so a widened allowlist is a visible test change.
JOB_NEUTRAL = {
    "demo": {"gold_labels", "gold_column"},
    "label-cxr": {"export", "encoder.cache_entries", "encoder.torch_threads"},
    "label-leavs": {"csv_name", "shuffle_partitions", "shuffle_strategy"},
    "segment": {"manifest.limit", "inference.sw_batch_size", "inference.prompts_per_pass",
                "inference.sw_device", "inference.torch_threads"},
    "generate-jcb": {"settings", "shots", "limit", "model_name"},
}


def _leaves(node, prefix=""):
    if isinstance(node, dict) and node:
        for k, v in node.items():
            yield from _leaves(v, f"{prefix}{k}.")
    else:
        yield prefix.rstrip(".")


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return value + ["x"]
    if isinstance(value, dict):
        return {**value, "x": 1}
    return "x"  # None


def _set(data, path, value):
    node = data
    parts = path.split(".")
    for p in parts[:-1]:
        node = node[p]
    node[parts[-1]] = value


def _neutral(job: str, path: str) -> bool:
    extra = JOB_NEUTRAL.get(job, set())
    parts = path.split(".")
    prefixes = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return bool(prefixes & (RESULT_NEUTRAL_PATHS | extra)) or bool(set(parts) & RESULT_NEUTRAL_NAMES)


def test_the_allowlist_is_small():
    assert RESULT_NEUTRAL_PATHS == {"job", "run", "corpus.limit", "corpus.check_duplicate_ids"}
    assert len(RESULT_NEUTRAL_NAMES) <= 20


@pytest.mark.parametrize("job", CORPUS_JOBS)
def test_every_field_but_the_allowlisted_ones_changes_the_fingerprint(job):
    spec = JOBS[job]
    cls = spec.config_class
    overrides = {"segment": ["manifest.path=m.csv", "model=m"]}.get(job, [])
    cfg = load_config(cls, REPO / "configs" / f"{job.replace('-', '_')}.yaml", overrides)
    assert set(cls.result_neutral_fields) == JOB_NEUTRAL.get(job, set())
    data = cfg.model_dump(mode="json")
    extra = frozenset(cls.result_neutral_fields)
    base = strip_neutral(data, extra)
    checked = 0
    for path in _leaves(data):
        other = copy.deepcopy(data)
        value = other
        for p in path.split("."):
            value = value[p]
        _set(other, path, _changed(value))
        same = strip_neutral(other, extra) == base
        assert same == _neutral(job, path), f"{job}: {path} neutral={same}"
        checked += 1
    assert checked >= 5


def test_no_job_builds_its_run_spec_by_hand():
    """Every corpus job reaches the runner through run_spec (the one fingerprint)."""
    for path in (REPO / "ctray" / "tasks").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "RunSpec":
                pytest.fail(f"{path}: RunSpec(...) built by hand; use pipeline.job.run_spec")


def _label_cxr(out, *extra):
    return ["label-cxr", "--config", str(REPO / "configs" / "label_cxr.yaml"),
            "--output", str(out), "--set", "export.csv=false", *extra]


def test_resume_with_other_text_sections_is_refused_and_names_the_field(ray_local, tmp_path,
                                                                         capsys):
    """The issue's mixed run: first block from findings + impression, the rest from the
    impression only. A partial run (limit 5, like a kill after the first block) holds rows."""
    out = tmp_path / "cxr"
    assert main(_label_cxr(out, "--limit", "5")) == 0
    capsys.readouterr()
    code = main(_label_cxr(out, "--set", "corpus.text_sections=[impression]"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("ctray: "), err
    assert "config.corpus.text_sections" in err[0] and "new output folder" in err[0]
    assert len(pd.read_parquet(out / "results")) == 5
    # Allowlisted changes resume: more rows, another block size, other resources.
    assert main(_label_cxr(out, "--limit", "8", "--set", "run.rows_per_block=2",
                           "--set", "rules.batch_size=3")) == 0
    assert "3 rows done, 0 failed, 5 already done" in capsys.readouterr().out


def test_text_stats_refuses_a_changed_setting_after_a_partial_run(ray_local, tmp_path, capsys):
    csv = tmp_path / "c.csv"
    csv.write_text("id,report\n" + "".join(f"r{i},Report {i}. Normal.\n" for i in range(6)),
                   encoding="utf-8")
    out = tmp_path / "out"
    args = ["stats-text", "--set", f"corpus.path={csv}", "--set", "corpus.id_column=id",
            "--set", "corpus.text_column=report", "--output", str(out)]
    assert main(args + ["--limit", "2", "--set", "lang=en"]) == 0
    capsys.readouterr()
    for change in (["--set", "lang=ja"], ["--set", "corpus.keep_columns=[id]"]):
        assert main(args + ["--set", "lang=en", *change] if change[1] != "lang=ja"
                    else args + change) == 2
        err = capsys.readouterr().err
        assert err.startswith("ctray: ") and "changed: config." in err, err
    assert main(args + ["--set", "lang=en"]) == 0
    assert "4 rows done, 0 failed, 2 already done" in capsys.readouterr().out
