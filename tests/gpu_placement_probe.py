"""Driver for tests/test_cluster_gpu.py: ctray jobs on a cluster with fake GPU nodes.

    python tests/gpu_placement_probe.py ADDRESS REPORT.json JOB_ARGV_JSON [JOB_ARGV_JSON ...]

Joins the cluster at ADDRESS, runs each ``ctray <job> ...`` (one JSON list of CLI
arguments each) through ``ctray.cli.main`` in this process, then writes to REPORT.json
where things ran: the vLLM engine probes' records, Ray's placement-group table and the
node of every actor and task (Ray's state API).

Everything is ctray's real code path except vLLM's engine, which cannot start without
CUDA: Ray's ``vLLMEngineStage`` keeps its resources and scheduling (num_gpus,
accelerator type, the placement group and its ``ray_remote_args_fn``) and only its UDF
class is replaced by :class:`EngineProbe`, which records where Ray put it and, in a
placement group, starts one GPU task per bundle as vLLM's Ray executor starts its
tensor-parallel workers, recording each one's node and ``ray.get_gpu_ids()``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

#: where the probes append their records (a path on this machine; every node is local)
PROBE_LOG = os.environ.get("CTRAY_GPU_PROBE_LOG", "/dev/null")


def _bundle_worker():
    import ray

    return {"node_id": ray.get_runtime_context().get_node_id(), "gpu_ids": ray.get_gpu_ids()}


def engine_probe_class(log_path: str):
    from ray.llm._internal.batch.stages.base import StatefulStageUDF

    class EngineProbe(StatefulStageUDF):
        """Stands in for vLLMEngineStageUDF: records placement, answers every row."""

        def __init__(self, data_column, expected_input_keys, **engine):
            import ray
            from ray.util.placement_group import get_current_placement_group
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            super().__init__(data_column, expected_input_keys)
            ctx = ray.get_runtime_context()
            record = {"model": engine.get("model"),
                      "engine_kwargs": {k: engine["engine_kwargs"].get(k) for k in (
                          "tensor_parallel_size", "pipeline_parallel_size",
                          "distributed_executor_backend")},
                      "node_id": ctx.get_node_id(), "gpu_ids": ray.get_gpu_ids(),
                      "placement_group": None, "bundle_workers": []}
            pg = get_current_placement_group()
            if pg is not None:
                record["placement_group"] = pg.id.hex()
                remote = ray.remote(_bundle_worker)
                record["bundle_workers"] = ray.get([
                    remote.options(num_cpus=0, num_gpus=1, scheduling_strategy=(
                        PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i)))
                    .remote() for i in range(pg.bundle_count)])
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")

        async def udf(self, rows):
            for row in rows:
                yield {self.IDX_IN_BATCH_COLUMN: row[self.IDX_IN_BATCH_COLUMN],
                       "generated_text": "{}", "num_input_tokens": 1,
                       "num_generated_tokens": 1}

    return EngineProbe


def patch_vllm_engine(log_path: str) -> None:
    import ray.llm._internal.batch.stages as stages
    from ray.llm._internal.batch.stages.vllm_engine_stage import vLLMEngineStage

    probe = engine_probe_class(log_path)

    class ProbeEngineStage(vLLMEngineStage):
        fn: type = probe

    # build_vllm_engine_processor imports the stage class from here when it runs.
    stages.vLLMEngineStage = ProbeEngineStage


def main(argv: list[str]) -> int:
    import ray
    from ray.util import state

    address, report, jobs = argv[0], Path(argv[1]), [json.loads(a) for a in argv[2:]]
    probe_log = str(report.with_suffix(".probes.jsonl"))
    patch_vllm_engine(probe_log)
    ray.init(address=address, log_to_driver=False)
    from ctray.cli import main as ctray_main

    codes = []
    for job in jobs:
        # Which job a failure belongs to, in the test's failure message.
        print(f"gpu_placement_probe: job {len(codes)}: {job[0]} {job[-2:]}", file=sys.stderr,
              flush=True)
        codes.append(ctray_main(job))
    # Placement groups live as long as this driver: read them before leaving.
    groups = ray.util.placement_group_table()
    time.sleep(2)  # task events reach the state API with a delay
    job = ray.get_runtime_context().get_job_id()  # this driver's work only
    mine = [("job_id", "=", job)]
    actors = [dict(class_name=a.class_name, node_id=a.node_id, job_id=a.job_id,
                   required_resources=a.required_resources,
                   placement_group_id=a.placement_group_id)
              for a in state.list_actors(address=address, filters=mine, detail=True,
                                         limit=10000, raise_on_missing_output=False)]
    tasks = [dict(name=t.name, node_id=t.node_id, required_resources=t.required_resources,
                  placement_group_id=t.placement_group_id, type=t.type, state=t.state)
             for t in state.list_tasks(address=address, filters=mine, detail=True, limit=10000,
                                       raise_on_missing_output=False)]
    nodes = [{"node_id": n["NodeID"], "alive": n["Alive"], "resources": n["Resources"]}
             for n in ray.nodes()]
    probes = [json.loads(line) for line in Path(probe_log).read_text().splitlines()] \
        if Path(probe_log).exists() else []
    report.write_text(json.dumps({"codes": codes, "groups": groups, "nodes": nodes,
                                  "actors": actors, "tasks": tasks, "probes": probes},
                                 default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
