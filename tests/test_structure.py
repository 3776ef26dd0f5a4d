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
from ctray.jobs import ALIASES, JOBS, entrypoint_source, file_stem, job_modules, load_job_modules

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
    known = {file_stem(n) for n in [*NAMES, *ALIASES]}
    stale = {p.stem for p in (REPO / "jobs").glob("*.py")} - known
    assert not stale, f"jobs/ has entrypoints of unregistered jobs: {sorted(stale)}"


def test_job_names_are_verb_object_and_former_names_still_run(tmp_path, capsys):
    """One word order (``eval-findings``); a former name runs the job and says the new one."""
    verbs = {"label", "eval", "train", "generate", "score", "ground", "segment", "translate",
             "bench", "stats", "demo"}
    for name in NAMES:
        assert name.split("-")[0] in verbs, f"{name}: job names start with their verb"
    for old, new in ALIASES.items():
        assert new in JOBS and old not in JOBS
        assert (REPO / "jobs" / f"{file_stem(old)}.py").read_text(encoding="utf-8") == \
            entrypoint_source(old), f"jobs/{file_stem(old)}.py: run --write-entrypoints"
    assert ALIASES["findings-eval"] == "eval-findings"
    with pytest.raises(SystemExit):
        main(["findings-eval", "--help"])
    captured = capsys.readouterr()
    assert "ctray eval-findings" in captured.out
    assert "job 'findings-eval' is now 'eval-findings'" in captured.err


def test_entrypoint_runs_the_job_like_the_cli(tmp_path):
    """The generated file really is a working entrypoint: run it as a script."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(REPO / "jobs" / "stats_text.py"), "--help"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0 and "ctray stats-text" in done.stdout


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
        main(["eval-leavs", "--help"])
    out = capsys.readouterr().out
    # The job's own default (not RunConfig's), with its description.
    assert "run.output (str, default 'runs/leavs_eval')" in out
    assert "bootstrap resamples for the confidence intervals" in out
    assert "--retry-failed" not in out and "--ray-address" not in out
    rows = {path: doc for path, _, _, doc in describe_fields(JOBS["label-leavs"].config_class)}
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
# lower rank. Task packages, the review page (it knows every task's labels) and the CLI
# sit on top; the registry (jobs.py), the Serve framework (serving/) and the trainer
# plumbing (train/) sit below the task packages, which build on them.
RANK = {"errors": 0, "hardware": 0, "__init__": 0, "_api": 0, "io": 1, "text": 1, "models": 1,
        "metrics": 2, "pipeline": 2, "llm": 3, "config": 4, "train": 5, "jobs": 5, "serving": 5,
        "tasks": 6, "review": 7, "cli": 8, "local_cluster": 8}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path, strings: bool = True) -> list[tuple[int, str]]:
    """Every ctray module a file imports, function-level imports and imports by a literal
    string (``importlib.import_module("ctray...")``, ``__import__``) included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
        elif strings and _is_string_import(node):
            out.append((node.lineno, node.args[0].value))
    return [(line, m) for line, m in out if m == "ctray" or m.startswith("ctray.")]


def _is_string_import(node: ast.AST) -> bool:
    return (isinstance(node, ast.Call) and node.args
            and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
            and ast.unparse(node.func) in ("importlib.import_module", "import_module",
                                           "__import__"))


def _string_imports(path: Path) -> list[tuple[int, str]]:
    """Imports of a module named by a literal string, and ``__import__``: they hide a
    dependency an import statement would state. (Names that come from configuration,
    such as a fake backend's ``module:function``, are not dependencies of the code.)"""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if _is_string_import(node) or (isinstance(node, ast.Call)
                                       and ast.unparse(node.func) == "__import__"):
            out.append((node.lineno, ast.unparse(node)))
    return out


def test_rank_table_covers_every_part():
    parts = {p.stem if p.is_file() else p.name for p in CTRAY.iterdir()
             if (p.is_dir() and (p / "__init__.py").exists()) or p.suffix == ".py"}
    assert parts <= set(RANK), f"add {sorted(parts - set(RANK))} to RANK (and the docs)"


def test_lower_layers_never_import_upper_layers():
    problems = []
    for path in sorted(CTRAY.rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        src = _part(module)
        strings = str(path.relative_to(REPO)) not in STRING_IMPORTS_ALLOWED
        for line, target in _imports(path, strings):
            dst = _part(target)
            if dst != src and RANK[dst] >= RANK[src]:
                problems.append(f"{path.relative_to(REPO)}:{line} imports {target} "
                                f"({src} may not import {dst})")
    assert not problems, "\n".join(problems)


# The modules that import by name on purpose: the job registry finds the task
# packages' jobs.py (it sits below them) and loads a job's "module:attr" lazily.
STRING_IMPORTS_ALLOWED = {"ctray/jobs.py"}


def test_no_imports_by_string():
    problems = [f"{path.relative_to(REPO)}:{line} {call}"
                for path in sorted(CTRAY.rglob("*.py"))
                if str(path.relative_to(REPO)) not in STRING_IMPORTS_ALLOWED
                for line, call in _string_imports(path)]
    assert not problems, "import modules with import statements:\n" + "\n".join(problems)


def test_task_packages_never_import_each_other():
    """Shared logic moves down to the layer that owns it, never sideways into a task."""
    problems = []
    for path in sorted((CTRAY / "tasks").rglob("*.py")):
        parts = path.relative_to(CTRAY / "tasks").parts
        if len(parts) < 2:
            continue
        for line, target in _imports(path):
            other = target.split(".")[2] if target.startswith("ctray.tasks.") else None
            if other and other != parts[0]:
                problems.append(f"{path.relative_to(REPO)}:{line} imports {target}")
    assert not problems, "\n".join(problems)


def _top_classes(path: Path) -> list[tuple[str, list[str]]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [(n.name, [ast.unparse(b) for b in n.bases]) for n in tree.body
            if isinstance(n, ast.ClassDef)]


def _subclasses(base: type) -> list[type]:
    out, todo = [], [base]
    while todo:
        for sub in todo.pop().__subclasses__():
            out.append(sub)
            todo.append(sub)
    return out


ROLE_FILES = {"jobs.py", "schema.py", "prompts.py", "llm_tasks.py", "stages.py", "parsing.py",
              "evaluation.py", "serve.py", "__init__.py"}


def test_task_packages_have_the_fixed_layout():
    """Each role has one file in every task package: LLM tasks in ``llm_tasks.py``,
    pipeline stages in ``stages.py``, Serve apps in ``serve.py``, a job's config and run
    function in ``<short>_job.py`` (its public classes are config sections; private
    helpers of the run function may stay beside it)."""
    from pydantic import BaseModel

    from ctray.llm.task import LLMTask
    from ctray.pipeline.stage import Stage
    from ctray.serving.service import Service

    for package in sorted(p for p in (CTRAY / "tasks").iterdir() if (p / "jobs.py").exists()):
        for path in package.glob("*.py"):
            importlib.import_module(".".join(path.relative_to(REPO).with_suffix("").parts))
    homes = {LLMTask: "llm_tasks", Stage: "stages", Service: "serve"}
    problems = []
    for base, home in homes.items():
        for cls in _subclasses(base):
            module = cls.__module__
            if module.startswith("ctray.tasks.") and module.rpartition(".")[2] != home:
                problems.append(f"{module}.{cls.__qualname__} is a {base.__name__}: "
                                f"it belongs in {home}.py")
    for name in NAMES:
        module = importlib.import_module(_module(JOBS[name].config))
        for cls_name, bases in _top_classes(Path(module.__file__)):
            cls = getattr(module, cls_name)
            if not cls_name.startswith("_") and not issubclass(cls, BaseModel):
                problems.append(f"{module.__name__}.{cls_name}: a job module holds its config "
                                "and run function (move the class to its role file)")
    assert not problems, "\n".join(problems)


def test_layout_check_catches_a_stage_in_a_job_module(tmp_path):
    """The layout test is not vacuous: a Stage defined in a job module is found."""
    bad = tmp_path / "x_job.py"
    bad.write_text("from ctray.pipeline.stage import Stage\nclass S(Stage):\n    pass\n")
    assert _top_classes(bad) == [("S", ["Stage"])]
    sneaky = tmp_path / "y.py"
    sneaky.write_text("import importlib\nimportlib.import_module('ctray.tasks.cxr.schema')\n")
    assert _imports(sneaky) == [(2, "ctray.tasks.cxr.schema")]


def test_one_manifest_writer():
    """Manifests are written through ``ctray.io.manifest`` (or the runner, which builds on
    it): no job writes or patches ``manifest.json`` itself."""
    problems = []
    for path in sorted((CTRAY / "tasks").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for i, line in enumerate(text.splitlines(), 1):
            if ("manifest.json" in line and ("write" in line or "open(" in line)) \
                    or ".read_json()" in line or ".write_json(" in line:
                problems.append(f"{path.relative_to(REPO)}:{i}: {line.strip()}")
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
