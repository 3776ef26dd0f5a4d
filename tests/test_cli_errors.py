"""Every error path of the CLI ends in one `ctray:` line and exit code 2 (issue 18): bad
YAML in --config or --set, unknown jobs, fields and flags, out-of-range settings (all
refused before Ray starts), and missing, empty or malformed inputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import ctray.cli as cli
from ctray.jobs import JOBS, load_job_modules

REPO = Path(__file__).resolve().parents[1]
load_job_modules()
ALL_JOBS = sorted(JOBS)
CORPUS_JOBS = sorted(n for n, s in JOBS.items() if s.row_resumable
                     and "corpus" in s.config_class.model_fields)


def _config(job: str) -> str:
    return str(REPO / "configs" / f"{job.replace('-', '_')}.yaml")


@pytest.fixture
def no_ray(monkeypatch):
    """Config errors must be found before Ray starts: starting it fails the test."""
    def refuse(run_cfg):
        raise AssertionError("Ray was started before the config was validated")
    monkeypatch.setattr(cli, "init_ray", refuse)


def _one_line(capsys, argv, *needles):
    code = cli.main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, (argv, captured.err)
    assert len(lines) == 1 and lines[0].startswith("ctray: "), (argv, captured.err)
    for needle in needles:
        assert needle in lines[0], (argv, lines[0])
    return lines[0]


def _bad_cases(job: str, tmp_path: Path) -> list[tuple[list[str], tuple[str, ...]]]:
    broken = tmp_path / "broken.yaml"
    broken.write_text("job: x\nrun: {output: [unclosed\n", encoding="utf-8")
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n", encoding="utf-8")
    cases = [
        (["--config", str(broken)], ("broken.yaml: not valid YAML", "line")),
        (["--config", str(listing)], ("must be a mapping",)),
        (["--config", str(tmp_path / "missing.yaml")], ("does not exist",)),
        (["--config", _config(job), "--set", "run.output=[a, b"], ("not valid YAML",)),
        (["--config", _config(job), "--set", "no_such_field=1"], ("no_such_field",)),
        (["--config", _config(job), "--set", "noequals"], ("key.path=value",)),
        (["--config", _config(job), "--bogus-flag"], ("unrecognized arguments: --bogus-flag",)),
        (["--config", _config(job), "--set", "run.log_level=LOUD"], ("run.log_level",)),
        (["--config", _config(job), "--set", "run.writer_batch_size=0"],
         ("run.writer_batch_size", "greater than or equal to 1")),
    ]
    if "corpus" in JOBS[job].config_class.model_fields:
        cases += [
            (["--config", _config(job), "--set", "corpus.limit=-3"],
             ("corpus.limit", "greater than or equal to 0")),
            (["--config", _config(job), "--set", "run.rows_per_block=-5"],
             ("run.rows_per_block",)),
            (["--config", _config(job), "--set", "run.rows_per_block=0"],
             ("run.rows_per_block",)),
        ]
    return cases


@pytest.mark.parametrize("job", ALL_JOBS)
def test_bad_config_and_arguments_fail_before_ray_with_one_line(job, tmp_path, capsys, no_ray):
    for args, needles in _bad_cases(job, tmp_path):
        _one_line(capsys, [job, *args], *needles)


def test_unknown_job_is_one_line_exit_2(capsys):
    _one_line(capsys, ["nosuchjob"], "unknown job 'nosuchjob'", "stats-text")


@pytest.mark.parametrize("job", CORPUS_JOBS)
def test_a_missing_corpus_is_one_line(job, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "init_ray", lambda run_cfg: None)
    extra = {"segment": []}.get(job, ["--set", "backend.kind=fake"]
                                if "backend" in JOBS[job].config_class.model_fields else [])
    _one_line(capsys, [job, "--config", _config(job), "--set",
                       f"corpus.path={tmp_path / 'nope.csv'}", "--output",
                       str(tmp_path / "o"), *extra], "nope.csv: no such file")
    assert not (tmp_path / "o").exists()


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def _empty(tmp_path: Path, name: str) -> str:
    path = tmp_path / name
    path.write_bytes(b"")
    return str(path)


EVAL_CASES = {
    "eval-cxr": lambda t: [
        (["--set", f"labelers=[{_empty(t, 'l.csv')}]"], ("l.csv", "not a readable")),
        (["--gold", _empty(t, "g.csv"), "--set", "labelers=[x.csv]"], ("g.csv",)),
        (["--set", f"labelers=[{t / 'nope'}]"], ("nope: no such file",)),
    ],
    "eval-findings": lambda t: [
        (["--predictions", _empty(t, "p.csv")], ("p.csv", "not a readable")),
        (["--predictions", str(t / "nope")], ("nope",)),
    ],
    "eval-translate": lambda t: [
        (["--set", f"hypotheses.path={_empty(t, 'h.jsonl')}",
          "--set", f"references.path={_empty(t, 'r.jsonl')}"], ("h.jsonl",)),
        (["--set", "hypotheses.path=" + _write(t, "m.jsonl", '{"report_id": 1,'),
          "--set", "references.path=" + _write(t, "r.jsonl", "")], ("m.jsonl", "not a readable")),
    ],
    "score-jcb": lambda t: [(["--generated", str(t / "nope"), "--set", "reference=null"],
                             ("nope",))],
    "eval-leavs": lambda t: [(["--set", f"predictions={t / 'nope.csv'}"], ("nope.csv",))],
}


@pytest.mark.parametrize("job", sorted(EVAL_CASES))
def test_missing_and_empty_evaluation_inputs_are_one_line(job, tmp_path, capsys):
    for args, needles in EVAL_CASES[job](tmp_path):
        _one_line(capsys, [job, "--config", _config(job), "--output", str(tmp_path / "o"),
                           *args], *needles)


@pytest.mark.parametrize("argv,needle", [
    (["nosuchjob"], "unknown job"),
    (["stats-text", "--set", "corpus.limit=-3"], "corpus.limit"),
    (["stats-text", "--set", "lang=[en"], "not valid YAML"),
])
def test_no_traceback_through_the_real_entry_point(argv, needle):
    proc = subprocess.run([sys.executable, "-m", "ctray.cli", *argv], capture_output=True,
                          text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ctray: ") and needle in lines[0], proc.stderr
