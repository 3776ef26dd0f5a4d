"""Starting (or joining) Ray for a job: the CLI and jobs that parallelise on demand share it."""

from __future__ import annotations

from contextlib import contextmanager
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


def keep_cpu_work_off_gpu_nodes() -> None:
    """On a cluster with GPU nodes, Datasets created from now on schedule their CPU
    tasks with Ray's ``DEFAULT`` policy instead of Ray Data's ``SPREAD`` (see
    :func:`pass_scheduling`): reads take it from the context current when they are
    created, so the CLI calls this once Ray is up, before a job reads its input."""
    import ray

    if not ray.is_initialized() or ray.cluster_resources().get("GPU", 0) <= 0:
        return
    from ray.data import DataContext

    _default_not_spread(DataContext.get_current())


def _default_not_spread(ctx) -> None:
    """Ray Data's ``SPREAD`` ignores Ray's preference for keeping CPU-only work off GPU
    nodes; ``DEFAULT`` keeps it (an explicit other strategy is left alone)."""
    if ctx.scheduling_strategy == "SPREAD":
        ctx.scheduling_strategy = "DEFAULT"


@contextmanager
def pass_scheduling(data_context=None, wants_gpus: bool = False):
    """Ray settings for one Ray Data pass of a job, on a cluster with GPU nodes.

    * CPU work off GPU nodes: Ray Data schedules its tasks (read, light maps, the
      Parquet writer) with ``SPREAD``, which ignores Ray's preference for keeping
      CPU-only work off GPU nodes; on a cluster with GPU nodes (or a pass asking for
      GPUs, whose nodes an autoscaler is about to add) they get Ray's ``DEFAULT``
      policy, which places CPU-only work on GPU nodes only when no CPU node can take it.
      ``data_context`` is the pass's Dataset's (``ds.context``: Ray Data copies the
      current context when a Dataset is read, so setting the global one here is too late).
    * The placement groups of this pass are removed when it ends. Ray's vLLM engine
      stage (``ray.data.llm``, tensor/pipeline parallel) creates one per engine actor
      and nobody removes it until the driver exits: the next pass of a multi-pass job
      (LEAVS, translate + back-translate) then waited forever for GPUs the finished
      pass still held (tests/test_cluster_gpu.py)."""
    import ray

    if not ray.is_initialized():
        yield
        return
    from ray.data import DataContext

    ctx = data_context or DataContext.get_current()
    before_strategy = ctx.scheduling_strategy
    if ray.cluster_resources().get("GPU", 0) > 0 or wants_gpus:
        _default_not_spread(ctx)
    job = ray.get_runtime_context().get_job_id()
    before_groups = set(ray.util.placement_group_table())
    try:
        yield
    finally:
        ctx.scheduling_strategy = before_strategy
        _remove_new_groups(job, before_groups)


def _remove_new_groups(job: str, before: set[str]) -> None:
    import ray
    from ray.util.placement_group import PlacementGroup

    from ray._raylet import PlacementGroupID

    for group_id, info in ray.util.placement_group_table().items():
        # A placement group's id ends with its creator's job id: only this driver's.
        if group_id in before or not group_id.endswith(job) or info.get("state") == "REMOVED":
            continue
        try:
            ray.util.remove_placement_group(
                PlacementGroup(PlacementGroupID(bytes.fromhex(group_id))))
        except Exception:  # noqa: BLE001 - already gone
            pass
