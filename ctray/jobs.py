"""The job registry: name → config class and run function (imported lazily).

``ctray <name>`` and ``python jobs/<name>.py`` both resolve through here, so the
CLI and ``ray job submit`` run the same function with the same config.
"""

from __future__ import annotations

import importlib
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
                 "ctray.tasks.demo:DemoConfig", "ctray.tasks.demo:run_demo"))
register(JobSpec("text-stats", "per-report text statistics (characters, words, sentences)",
                 "ctray.tasks.textstats:TextStatsConfig", "ctray.tasks.textstats:run_text_stats"))


def load_job_modules() -> None:
    """Task packages register their jobs on import; listed here so --help sees them all."""
    for module in ("ctray.tasks.translate.jobs", "ctray.tasks.findings.jobs",
                   "ctray.tasks.leavs.jobs", "ctray.tasks.grounding.jobs",
                   "ctray.serving.jobs"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            # Only a task package that is absent is skipped; a broken import is an error.
            if not exc.name or not module.startswith(exc.name):
                raise
