"""The job registry: name → config class and run function (imported lazily).

``ctray <name>`` and ``python jobs/<name>.py`` both resolve through here, so the
CLI and ``ray job submit`` run the same function with the same config.

Adding a job (see docs/architecture.md): write ``ctray/tasks/<x>/<short>_job.py``
with the config class and the run function, add one ``register(JobSpec(...))`` to
``ctray/tasks/<x>/jobs.py`` (discovered automatically), a config
``configs/<job_name>.yaml``, and generate the entrypoint with
``python -m ctray.jobs --write-entrypoints``. tests/test_structure.py checks all of it.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class JobSpec:
    name: str
    help: str
    config: str  # "module:ConfigClass"
    run: str  # "module:function" taking the config, returning a summary
    # Extra CLI flags: flag name -> config field path (``--predictions`` -> "predictions").
    flags: dict[str, str] = field(default_factory=dict)
    needs_ray: bool = True
    # Whether the job resumes and retries row-wise (run.resume, run.retry_failed): only
    # then does the CLI offer --no-resume and --retry-failed. None: jobs that start Ray
    # (corpus jobs through the runner) do, the others (evaluations) do not.
    resumable: bool | None = None
    # Former names: ``ctray <alias>`` still runs the job and says its new name.
    aliases: tuple[str, ...] = ()
    # The module whose import registered the job (set by ``register``).
    registered_in: str = ""

    def load(self, ref: str) -> Any:
        module, _, attr = ref.partition(":")
        return getattr(importlib.import_module(module), attr)

    @property
    def row_resumable(self) -> bool:
        return self.needs_ray if self.resumable is None else self.resumable

    @property
    def config_class(self):
        return self.load(self.config)

    @property
    def run_function(self) -> Callable[[Any], Any]:
        return self.load(self.run)


JOBS: dict[str, JobSpec] = {}
#: former job name -> its name now (job names are verb-object: ``eval-findings``)
ALIASES: dict[str, str] = {}


def register(spec: JobSpec) -> JobSpec:
    """Add a job (and its former names) to the registry; called by ``tasks/<x>/jobs.py``."""
    import sys
    from dataclasses import replace

    spec = replace(spec, registered_in=sys._getframe(1).f_globals.get("__name__", ""))
    JOBS[spec.name] = spec
    ALIASES.update(dict.fromkeys(spec.aliases, spec.name))
    return spec


def resolve(name: str) -> JobSpec | None:
    """The job called ``name`` now or formerly (a former name prints the new one)."""
    import sys

    load_job_modules()
    if name in ALIASES:
        print(f"ctray: job {name!r} is now {ALIASES[name]!r}; the old name will go",
              file=sys.stderr)
        name = ALIASES[name]
    return JOBS.get(name)


def job_modules() -> list[str]:
    """Every ``jobs`` module: one per task package (``ctray.tasks.<x>.jobs``).

    Discovered, not listed: adding a task package with a ``jobs.py`` is enough for
    ``ctray --help`` and ``jobs/`` to see its jobs."""
    import pkgutil

    # Imported by name: the registry sits below the task packages (they import it).
    tasks = importlib.import_module("ctray.tasks")
    found = [f"ctray.tasks.{m.name}.jobs" for m in pkgutil.iter_modules(tasks.__path__)
             if m.ispkg and importlib.util.find_spec(f"ctray.tasks.{m.name}.jobs") is not None]
    return sorted(found)


def load_job_modules() -> None:
    """Import every jobs module; each registers its jobs on import."""
    for module in job_modules():
        importlib.import_module(module)


# --------------------------------------------------------------------- entrypoints

def file_stem(name: str) -> str:
    """``train-findings`` → ``train_findings``: the jobs/ and configs/ file name."""
    return name.replace("-", "_")


def entrypoint_source(name: str) -> str:
    """The text of ``jobs/<stem>.py``: what ``ray job submit`` runs for the job (for a
    former name: the same job, which then prints its new name)."""
    stem = file_stem(name)
    config = file_stem(ALIASES.get(name, name))
    return (f'"""``ray job submit --working-dir . -- python jobs/{stem}.py '
            f'--config configs/{config}.yaml``"""\n\n'
            "import sys\n\nfrom ctray.cli import job_entrypoint\n\n"
            'if __name__ == "__main__":\n'
            f"    sys.exit(job_entrypoint({name!r}))\n").replace("'", '"')


def write_entrypoints(folder: str = "jobs") -> list[str]:
    """(Re)write ``<folder>/<stem>.py`` for every registered job and former job name (a
    ``ray job submit`` command in the wild keeps working); returns the changed files."""
    from pathlib import Path

    load_job_modules()
    changed = []
    for name in sorted([*JOBS, *ALIASES]):
        path = Path(folder) / f"{file_stem(name)}.py"
        text = entrypoint_source(name)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            changed.append(str(path))
    return changed


if __name__ == "__main__":  # python -m ctray.jobs --write-entrypoints [folder]
    import sys

    if sys.argv[1:2] != ["--write-entrypoints"]:
        sys.exit("usage: python -m ctray.jobs --write-entrypoints [folder (default: jobs)]")
    # Through the imported module: run as __main__, this file's JOBS is not the registry.
    from ctray.jobs import write_entrypoints as _write

    for changed_file in _write(*sys.argv[2:3]):
        print(f"wrote {changed_file}")
