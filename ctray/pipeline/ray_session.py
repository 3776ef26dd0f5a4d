"""Starting (or joining) Ray for a job: the CLI and jobs that parallelise on demand share it."""

from __future__ import annotations

from typing import Any


def init_ray(run_cfg) -> None:
    """Join ``run.ray_address`` ("auto" inside a cluster) or start a local Ray with
    ``run.num_cpus``; a no-op when this process already has Ray running."""
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "configure_logging": False}
    if run_cfg.ray_address:
        kwargs["address"] = run_cfg.ray_address
    elif run_cfg.num_cpus:
        kwargs["num_cpus"] = run_cfg.num_cpus
    ray.init(**kwargs)
