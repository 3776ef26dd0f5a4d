"""The project's structure rules, checked over the code itself (docs/architecture.md).

- every registered job lives in one ``<short>_job.py`` module of the package whose
  ``jobs.py`` registers it, has a config in ``configs/`` that validates, and a generated
  entrypoint in ``jobs/``; ``jobs.py`` modules hold registrations only;
- lower layers never import task packages, serving or the CLI (an AST check of ctray/);
- shipped configs never point at test code;
- the CLI offers only the flags a job honours, and ``--help`` lists the config fields.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest
import yaml

from ctray.cli import job_parser, main
from ctray.config import JobConfig, describe_fields, load_config
from ctray.jobs import JOBS, entrypoint_source, file_stem, job_modules, load_job_modules

REPO = Path(__file__).resolve().parents[1]
CTRAY = REPO / "ctray"

load_job_modules()
NAMES = sorted(JOBS)


def _module(ref: str) -> str:
    return ref.partition(":")[0]


# ------------------------------------------------------------------------ jobs

@pytest.mark.parametrize("name", NAMES)
def test_job_has_one_home(name):
    spec = JOBS[name]
    module = _module(spec.config)
    assert _module(spec.run) == module, f"{name}: config and run function in different modules"
    package, _, leaf = module.rpartition(".")
    assert leaf.endswith("_job"), f"{name}: job module {module} is not named <short>_job"
    assert spec.registered_in == f"{package}.jobs", \
        f"{name} is registered in {spec.registered_in}, not next to its code ({package}.jobs)"
    assert spec.registered_in in job_modules()
    cfg_cls = spec.config_class
    assert issubclass(cfg_cls, JobConfig)
    assert cfg_cls.model_fields["job"].default == name, f"{name}: config's job default"
    assert callable(spec.run_function)


@pytest.mark.parametrize("name", NAMES)
def test_job_has_a_valid_config_and_the_generated_entrypoint(name):
    stem = file_stem(name)
    entry = REPO / "jobs" / f"{stem}.py"
    assert entry.exists() and entry.read_text(encoding="utf-8") == entrypoint_source(name), \
        f"jobs/{stem}.py is missing or stale: run python -m ctray.jobs --write-entrypoints"
    config = REPO / "configs" / f"{stem}.yaml"
    assert config.exists(), f"configs/{stem}.yaml is missing"
    cfg = load_config(JOBS[name].config_class, config)
    assert cfg.job == name


def test_no_stale_entrypoints():
    stale = {p.stem for p in (REPO / "jobs").glob("*.py")} - {file_stem(n) for n in NAMES}
    assert not stale, f"jobs/ has entrypoints of unregistered jobs: {sorted(stale)}"


def test_entrypoint_runs_the_job_like_the_cli(tmp_path):
    """The generated file really is a working entrypoint: run it as a script."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(REPO / "jobs" / "text_stats.py"), "--help"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0 and "ctray text-stats" in done.stdout


@pytest.mark.parametrize("module", job_modules())
def test_jobs_modules_only_register(module):
    tree = ast.parse(inspect.getsource(importlib.import_module(module)))
    for node in tree.body:
        ok = (isinstance(node, (ast.Import, ast.ImportFrom))
              or (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))
              or (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
                  and getattr(node.value.func, "id", None) == "register"))
        assert ok, f"{module} line {node.lineno}: jobs.py holds registrations only"


RUNNER_NAMES = {"run_corpus_job", "run_pass", "run_spec", "run_pipeline"}


@pytest.mark.parametrize("name", NAMES)
def test_resume_flags_only_for_jobs_that_resume(name):
    spec = JOBS[name]
    source = inspect.getsource(importlib.import_module(_module(spec.run)))
    used = {n.id for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Name)}
    used |= {a.name for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom)
             for a in n.names}
    flags = {a.option_strings[0] for a in job_parser(spec)._actions if a.option_strings}
    if spec.row_resumable:
        assert used & RUNNER_NAMES, f"{name} offers --retry-failed but does not use the runner"
        assert {"--retry-failed", "--no-resume"} <= flags
    else:
        assert not {"--retry-failed", "--no-resume"} & flags
    if not spec.needs_ray:
        assert "--ray-address" not in flags


@pytest.mark.parametrize("name", NAMES)
def test_job_flags_name_real_config_fields(name):
    """A job's own flags set config fields that exist (a flag never goes nowhere)."""
    paths = {path for path, _, _, _ in describe_fields(JOBS[name].config_class)}
    for flag, path in JOBS[name].flags.items():
        assert path in paths, f"{name}: {flag} sets {path}, which is not a config field"


def test_help_lists_config_fields_with_descriptions(capsys):
    with pytest.raises(SystemExit):
        main(["leavs-eval", "--help"])
    out = capsys.readouterr().out
    # The job's own default (not RunConfig's), with its description.
    assert "run.output (str, default 'runs/leavs_eval')" in out
    assert "bootstrap resamples for the confidence intervals" in out
    assert "--retry-failed" not in out and "--ray-address" not in out
    rows = {path: doc for path, _, _, doc in describe_fields(JOBS["leavs"].config_class)}
    # A description inherited from the base class, and one taken from a source comment.
    assert rows["corpus"].startswith("the reports to read")
    assert rows["fast"].startswith("Skip the per-sentence check")


def _config_models(cls, prefix=""):
    """(dotted path, model class, field name) of every field of ``cls``, nested sections
    included."""
    import typing

    from pydantic import BaseModel

    for name, info in cls.model_fields.items():
        yield prefix + name, cls, name
        for t in (info.annotation, *typing.get_args(info.annotation)):
            if isinstance(t, type) and issubclass(t, BaseModel):
                yield from _config_models(t, f"{prefix}{name}.")


def test_every_config_field_has_a_description():
    """``Field(description=...)`` on every field of every job config and every backend
    kind (a source comment does not count), so ``--help`` never shows a blank."""
    from ctray.config import field_description
    from ctray.llm.config import BACKEND_CONFIGS

    roots = [(name, JOBS[name].config_class) for name in NAMES]
    roots += [(f"backend kind {kind}", cls) for kind, cls in sorted(BACKEND_CONFIGS.items())]
    missing = [f"{root}: {path} ({cls.__name__}.{field})"
               for root, root_cls in roots
               for path, cls, field in _config_models(root_cls)
               if not field_description(cls, field)]
    assert not missing, "fields without Field(description=...):\n" + "\n".join(missing)


# ------------------------------------------------------------------------ layers

# Rank of each top-level part of ctray: a module may import its own part or a part of
# lower rank. Task packages, serving and the CLI sit on top; the registry (jobs.py)
# sits below the task packages, which import it to register.
RANK = {"errors": 0, "__init__": 0, "_api": 0, "io": 1, "text": 1, "metrics": 2, "pipeline": 2,
        "llm": 3, "config": 4, "train": 5, "jobs": 5, "tasks": 6, "serving": 7, "cli": 8}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return [(line, m) for line, m in out if m == "ctray" or m.startswith("ctray.")]


def test_rank_table_covers_every_part():
    parts = {p.stem if p.is_file() else p.name for p in CTRAY.iterdir()
             if (p.is_dir() and (p / "__init__.py").exists()) or p.suffix == ".py"}
    assert parts <= set(RANK), f"add {sorted(parts - set(RANK))} to RANK (and the docs)"


def test_lower_layers_never_import_upper_layers():
    problems = []
    for path in sorted(CTRAY.rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        src = _part(module)
        for line, target in _imports(path):
            dst = _part(target)
            if dst != src and RANK[dst] >= RANK[src]:
                problems.append(f"{path.relative_to(REPO)}:{line} imports {target} "
                                f"({src} may not import {dst})")
    assert not problems, "\n".join(problems)


def test_shipped_configs_do_not_point_at_tests():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        def walk(node):
            if isinstance(node, dict):
                for v in node.values():
                    yield from walk(v)
            elif isinstance(node, list):
                for v in node:
                    yield from walk(v)
            elif isinstance(node, str):
                yield node
        for value in walk(yaml.safe_load(path.read_text(encoding="utf-8")) or {}):
            # Test code (a module path or a .py file); test data a config may name.
            code = value.startswith("tests.") or (value.startswith("tests/")
                                                   and value.split(":")[0].endswith(".py"))
            assert not code, f"{path.name}: {value}"


def test_rank_check_catches_a_violation(tmp_path):
    """The layer check is not vacuous: an io module importing a task package is caught."""
    bad = tmp_path / "ctray" / "io" / "bad.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("from ctray.tasks.findings.schema import FINDING_COLUMNS\n")
    (line, target), = _imports(bad)
    assert RANK[_part(target)] >= RANK[_part("ctray.io.bad")]


# ------------------------------------------------------------------------ docs

def test_readme_and_cluster_doc_list_every_job_and_doc():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    cluster = (REPO / "docs" / "cluster.md").read_text(encoding="utf-8")
    for name in NAMES:
        assert f"`{name}`" in readme, f"README's job table lacks {name}"
        assert f"`jobs/{file_stem(name)}.py`" in cluster, f"docs/cluster.md's table lacks {name}"
    for doc in sorted((REPO / "docs").glob("*.md")):
        assert f"`docs/{doc.name}`" in readme, f"README's 'More' does not list docs/{doc.name}"
    for linked in __import__("re").findall(r"docs/[\w./-]+\.md", readme):
        assert (REPO / linked).exists(), f"README links {linked}, which does not exist"


def test_packages_name_their_public_api():
    """Every package has a docstring, and each name its ``__all__`` promises resolves."""
    for init in sorted(CTRAY.rglob("__init__.py")):
        package = ".".join(init.parent.relative_to(REPO).parts)
        module = importlib.import_module(package)
        assert (module.__doc__ or "").strip(), f"{package} has no docstring"
        for name in getattr(module, "__all__", []):
            assert getattr(module, name) is not None, f"{package}.{name}"
