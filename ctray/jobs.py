"""The job registry: name → config class and run function (imported lazily).

``ctray <name>`` and ``python jobs/<name>.py`` both resolve through here, so the
CLI and ``ray job submit`` run the same function with the same config.
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

    def load(self, ref: str) -> Any:
        module, _, attr = ref.partition(":")
        return getattr(importlib.import_module(module), attr)

    @property
    def config_class(self):
        return self.load(self.config)

    @property
    def run_function(self) -> Callable[[Any], Any]:
        return self.load(self.run)


JOBS: dict[str, JobSpec] = {}


def register(spec: JobSpec) -> JobSpec:
    JOBS[spec.name] = spec
    return spec


register(JobSpec("demo", "end-to-end chain on the bundled sample reports (CPU, local Ray)",
                 "ctray.tasks.demo.demo_job:DemoConfig", "ctray.tasks.demo.demo_job:run_demo"))
register(JobSpec("text-stats", "per-report text statistics (characters, words, sentences)",
                 "ctray.tasks.textstats:TextStatsConfig", "ctray.tasks.textstats:run_text_stats"))


def job_modules() -> list[str]:
    """Every ``jobs`` module: one per task package (``ctray.tasks.<x>.jobs``) and serving's.

    Discovered, not listed: adding a task package with a ``jobs.py`` is enough for
    ``ctray --help`` and ``jobs/`` to see its jobs."""
    import pkgutil

    import ctray.tasks

    found = [f"ctray.tasks.{m.name}.jobs" for m in pkgutil.iter_modules(ctray.tasks.__path__)
             if m.ispkg and importlib.util.find_spec(f"ctray.tasks.{m.name}.jobs") is not None]
    return sorted(found) + ["ctray.serving.jobs"]


def load_job_modules() -> None:
    """Import every jobs module; each registers its jobs on import."""
    for module in job_modules():
        importlib.import_module(module)
