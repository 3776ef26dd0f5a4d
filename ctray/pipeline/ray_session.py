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


#: Where Ray unpacks a job's ``--working-dir`` package (deleted with the cluster).
RUNTIME_WORKING_DIR_MARK = "/runtime_resources/working_dir_files/"


def runtime_working_dir(cwd: str | None = None) -> str | None:
    """The ``ray job submit --working-dir`` package this process runs in, or None."""
    import os

    cwd = os.path.realpath(cwd or os.getcwd())
    if RUNTIME_WORKING_DIR_MARK not in cwd + "/":
        return None
    head, _, rest = (cwd + "/").partition(RUNTIME_WORKING_DIR_MARK)
    return head + RUNTIME_WORKING_DIR_MARK + rest.split("/", 1)[0]


def check_submitted_output(output: str, cwd: str | None = None) -> None:
    """A submitted job must write where its results outlive the job: an object store
    URI or an absolute path outside Ray's temporary working-dir package."""
    import os

    from ctray.errors import UserError

    package = runtime_working_dir(cwd)
    if package is None or "://" in output:
        return
    target = os.path.realpath(os.path.join(cwd or os.getcwd(), output))
    if target == package or target.startswith(package + os.sep):
        raise UserError(
            f"run.output {output!r} would be written into Ray's temporary working directory "
            f"({package}), which is deleted with the job's runtime environment; set --output "
            "to s3://... / gs://... or an absolute path on a volume every node mounts")
