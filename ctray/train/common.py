"""Ray Train plumbing shared by the trainers: scaling and checkpoint settings, the
resume guard, trainer construction and model export to a local path or URI.

Ray Train V2 (Ray 2.60) resumes a run that is started again with the same
``RunConfig(name, storage_path)``; the fingerprint file beside the checkpoints is
what stops such a restart from silently continuing a different experiment.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field

from ctray.errors import UserError

FINGERPRINT_FILE = "ctray_train_fingerprint.json"


class ScalingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_workers: int = Field(1, description="Ray Train workers (one per GPU on a GPU cluster)")
    use_gpu: bool | Literal["auto"] = Field(
        "auto", description="train on GPUs; auto: when the cluster has them")
    cpus_per_worker: float = Field(1.0, description="CPUs reserved per worker")
    max_failures: int = Field(0, description="worker failures Ray Train recovers from (from the "
                              "last checkpoint)")


class CheckpointParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    storage_path: str | None = Field(None, description="default <run.output>/checkpoints; s3:// "
                                     "for clusters")
    name: str = Field("train", description="this run's folder under the checkpoint storage")
    num_to_keep: int = Field(2, description="checkpoints kept (the best and latest survive)")
    allow_config_change: bool = Field(False, description="resume from checkpoints written under "
                                      "another configuration")


def abs_uri(path: str) -> str:
    """Ray Train needs absolute storage paths; URIs pass unchanged."""
    return path if "://" in path else str(Path(path).resolve())


def run_locations(cfg) -> tuple[str, str, str, str]:
    """(output, checkpoint storage, this run's checkpoint folder, export folder) of a
    trainer config: ``checkpoint.storage_path`` defaults to ``<run.output>/checkpoints``,
    ``export`` to ``<run.output>/model``; both absolute, as Ray Train requires."""
    output = cfg.run.output
    storage = abs_uri(cfg.checkpoint.storage_path or f"{output}/checkpoints")
    run_dir = f"{storage.rstrip('/')}/{cfg.checkpoint.name}"
    return output, storage, run_dir, abs_uri(cfg.export or f"{output}/model")


def use_gpu(setting: bool | str) -> bool:
    """``auto``: whether the Ray cluster has GPUs."""
    if setting != "auto":
        return bool(setting)
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def gather(obj, world: int) -> list:
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out: list = [None] * world
    dist.all_gather_object(out, obj)
    return out


def check_resume(run_dir: str, fingerprint: dict[str, Any], allow_change: bool,
                 what: str) -> dict | None:
    """The previous run's fingerprint (None for a new run); refuses a changed config.
    ``what`` names what may not change, for the message."""
    from pyarrow import fs as pafs

    from ctray.io.output import resolve_fs, write_bytes_atomic

    filesystem, path = resolve_fs(f"{run_dir}/{FINGERPRINT_FILE}")
    current = json.loads(json.dumps(fingerprint))
    previous = None
    if filesystem.get_file_info(path).type == pafs.FileType.File:
        with filesystem.open_input_stream(path) as f:
            previous = json.loads(f.read().decode("utf-8"))
        if previous != current and not allow_change:
            raise UserError(f"{run_dir} holds checkpoints of a different training configuration "
                            f"({what} changed). Use a new checkpoint.name, or set "
                            "checkpoint.allow_config_change=true to continue anyway.")
    write_bytes_atomic(f"{run_dir}/{FINGERPRINT_FILE}", json.dumps(current, indent=2).encode())
    return previous


def announce_resume(job: str, run_dir: str, previous: dict | None, unit: str = "epoch") -> None:
    """Say where a resumed run continues (``unit``: the metric the loop reports)."""
    if previous is None:
        return
    from ray.train import Result

    try:
        last = Result.from_path(run_dir).metrics or {}
        print(f"[{job}] resuming {run_dir} after {unit} {last.get(unit, '?')}")
    except RuntimeError:
        print(f"[{job}] {run_dir} has no finished {unit} yet: starting from the beginning")


@dataclass
class TrainingRun:
    """Where a trainer writes and on what it runs (:func:`prepare_run`)."""

    output: str
    storage: str
    run_dir: str
    export_to: str
    gpu: bool
    previous: dict | None

    def trainer(self, cfg, loop: Callable, loop_config: dict[str, Any],
                score: str | None = None):
        """The TorchTrainer of ``cfg`` (its ``scaling`` and ``checkpoint`` sections)."""
        return make_trainer(loop, loop_config, cfg.scaling, cfg.checkpoint, self.storage,
                            self.gpu, score)


def prepare_run(cfg, fingerprint: dict[str, Any], what: str, unit: str = "epoch") -> TrainingRun:
    """The set-up every trainer shares, for a config with ``run``, ``checkpoint``,
    ``scaling`` and ``export``: locations (:func:`run_locations`), the resume guard
    (:func:`check_resume`; ``what`` names what may not change), the resume message and
    the device."""
    output, storage, run_dir, export_to = run_locations(cfg)
    previous = check_resume(run_dir, fingerprint, cfg.checkpoint.allow_config_change, what)
    announce_resume(cfg.job, run_dir, previous, unit)
    return TrainingRun(output, storage, run_dir, export_to, use_gpu(cfg.scaling.use_gpu),
                       previous)


def make_trainer(loop: Callable, loop_config: dict[str, Any], scaling: ScalingParams,
                 checkpoint: CheckpointParams, storage: str, gpu: bool,
                 score: str | None = None):
    """A TorchTrainer; with ``score``, Ray keeps the best checkpoints by that metric."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    keep = {"checkpoint_score_attribute": score, "checkpoint_score_order": "max"} if score else {}
    return TorchTrainer(
        loop, train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=scaling.num_workers, use_gpu=gpu,
                                     resources_per_worker={"CPU": scaling.cpus_per_worker,
                                                           **({"GPU": 1} if gpu else {})}),
        run_config=RunConfig(
            name=checkpoint.name, storage_path=storage,
            checkpoint_config=CheckpointConfig(num_to_keep=checkpoint.num_to_keep, **keep),
            failure_config=FailureConfig(max_failures=scaling.max_failures)),
    )


def export_dir(target: str, save: Callable[[str], None]) -> None:
    """Run ``save(directory)`` on ``target``, staging through a local folder for URIs."""
    if "://" not in target:
        save(target)
        return
    from pyarrow import fs as pafs

    with tempfile.TemporaryDirectory() as tmp:
        save(tmp)
        pafs.copy_files(tmp, target)
