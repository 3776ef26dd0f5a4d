"""benchmarks/gpu_suite.py's dry run: the plan CI can check without a GPU."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", REPO / "benchmarks" / "gpu_suite.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_suite"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_gpu_suite_plan_covers_every_gpu_path_and_validates(suite, tmp_path, capsys):
    assert suite.main(["--dry-run", "--output", str(tmp_path / "suite")]) == 0
    printed = capsys.readouterr().out
    for job in ("ctray demo", "ctray label-leavs", "ctray train-findings", "ctray label-findings",
                "ctray train-grounding", "ctray segment"):
        assert job in printed
    assert "backend.device=gpu" in printed and "plan of 7 steps checked" in printed
    assert not (tmp_path / "suite").exists()  # a dry run writes nothing


def test_gpu_suite_dry_run_rejects_a_broken_plan(suite, tmp_path):
    from pydantic import ValidationError

    steps = suite.plan(str(tmp_path))
    steps[0].args += ["--set", "backend.no_such_field=1"]
    with pytest.raises((ValidationError, ValueError, SystemExit)):
        suite.check_plan(steps)
    steps = suite.plan(str(tmp_path))
    steps.insert(0, steps.pop(3))  # label-findings before the model it reads is trained
    with pytest.raises(SystemExit, match="reads"):
        suite.check_plan(steps)
