"""GPU placement without GPUs: ctray's GPU configs on a cluster of fake GPU nodes.

Nodes declare logical ``GPU`` and ``accelerator_type:H100`` (as Ray's autodetection does
on a real H100 node); the jobs run through ctray's real code path on that cluster and
Ray's state API says where every actor, task and placement group went. vLLM engines
cannot start without CUDA, so their Ray stage runs a probe in place of the engine
(tests/gpu_placement_probe.py) with the resources and scheduling ctray configured. The
findings classifier and segmentation run their real models on the CPU of the GPU node
(``device=cpu``), scheduled with the GPU they ask for.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cluster_fixtures import LocalCluster

REPO = Path(__file__).resolve().parents[1]
# Cluster start and five GPU jobs in one driver (about a minute on 2 cores): extended tier,
# to keep CI within 30 minutes with the node-loss tests in it (docs/architecture.md).
pytestmark = [pytest.mark.slow, pytest.mark.extended]
ACCEL = "accelerator_type:H100"


@pytest.fixture(scope="module")
def gpu_cluster():
    """Head (no task CPUs), a CPU node, a 1-GPU and a 2-GPU node (both H100)."""
    c = LocalCluster(workers=1, worker_cpus=3, object_store_mb=80)
    try:
        nodes = {"cpu": c.workers[0],
                 "gpu1": c.add_worker(num_cpus=2, num_gpus=1, resources={ACCEL: 1}),
                 "gpu2": c.add_worker(num_cpus=3, num_gpus=2, resources={ACCEL: 1})}
        yield c, {name: n.node_id for name, n in nodes.items()}
    finally:
        c.shutdown()


def gpu_jobs(root: Path) -> dict[str, list[str]]:
    """CLI arguments of the four GPU jobs, over tiny local models and inputs in ``root``."""
    from serve_fixtures import build_findings_checkpoint
    from tiny_models import build_scripted_lm

    from ctray.tasks.grounding.model import save_tiny_text_encoder
    from ctray.tasks.grounding.model_dir import (GroundingModelMeta, build_model,
                                                 save_grounding_model)
    from ctray.tasks.grounding.phantoms import write_phantom_set
    from ctray.tasks.grounding.preprocess import PreprocessConfig

    reports = root / "reports.csv"
    pd.read_csv(REPO / "ctray" / "data" / "sample_reports_en.csv").head(6).to_csv(
        reports, index=False)
    lm = build_scripted_lm(root / "lm", ["{}"])
    classifier = build_findings_checkpoint(root / "classifier", lang="en")
    manifest = write_phantom_set(root / "phantoms", 1, shape=(40, 40, 16), seed=0)
    encoder = save_tiny_text_encoder(root / "encoder", manifest.finding_text.tolist())
    # The sizes of tests/test_grounding_imaging.py: the U-Net's 4 poolings need 16 slices.
    meta = GroundingModelMeta(text_encoder=encoder, text_dim=32, features=(8, 8, 16, 16, 32, 8),
                              preprocess=PreprocessConfig(axial_size=(32, 32)),
                              roi_size=(32, 32, 16))
    grounding = save_grounding_model(root / "grounding", build_model(meta).state_dict(), meta)
    llm = ["label-findings", "--config", "configs/label_findings.yaml",
           "--set", f"corpus.path={reports}", "--labeler", "llm", "--backend", "vllm",
           "--set", f"backend.model={lm}", "--set", "backend.device=gpu",
           "--set", "backend.accelerator_type=H100", "--set", "llm.repair=false"]
    return {
        "tp1": [*llm, "--output", str(root / "tp1")],
        "tp2": [*llm, "--output", str(root / "tp2"), "--set", "backend.tensor_parallel_size=2"],
        # The same driver again, as the next pass of a multi-pass job (LEAVS, translate).
        "tp2_again": [*llm, "--output", str(root / "tp2_again"),
                      "--set", "backend.tensor_parallel_size=2"],
        "classifier": ["label-findings", "--config", "configs/label_findings.yaml",
                       "--output", str(root / "classifier_out"), "--set", f"corpus.path={reports}",
                       "--labeler", "model", "--model-dir", classifier,
                       "--set", "model.num_gpus=1", "--set", "model.device=cpu"],
        "segment": ["segment", "--config", "configs/segment.yaml", "--output", str(root / "seg"),
                    "--manifest", str(root / "phantoms" / "manifest.csv"),
                    "--model-dir", grounding, "--set", "resources.num_gpus=1",
                    "--set", "resources.num_cpus=1"],
    }


def _failure(stderr: str) -> str:
    """The probe's job markers (which job failed) and the end of its stderr."""
    marks = [line for line in stderr.splitlines() if line.startswith("gpu_placement_probe:")]
    return "\n".join(marks) + "\n...\n" + stderr[-4000:]


def run_probe(cluster: LocalCluster, root: Path, jobs: dict[str, list[str]]) -> dict:
    """The jobs in one driver process on the cluster; its placement report."""
    report = root / "report.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "gpu_placement_probe.py"), cluster.address,
         str(report), *(json.dumps(j) for j in jobs.values())],
        cwd=REPO, capture_output=True, text=True, timeout=480, env=cluster.client_env())
    assert proc.returncode == 0, _failure(proc.stderr)
    out = json.loads(report.read_text())
    assert out["codes"] == [0] * len(jobs), _failure(proc.stderr)
    out["root"] = root
    return out


@pytest.fixture(scope="module")
def placements(gpu_cluster, tmp_path_factory):
    """vLLM TP=1 and TP=2 (label-findings --labeler llm), the findings classifier and
    segmentation, run on the fake-GPU cluster; the driver's placement report."""
    cluster, _ = gpu_cluster
    root = tmp_path_factory.mktemp("gpu")
    return run_probe(cluster, root, gpu_jobs(root))


def test_tensor_parallel_engine_gets_one_placement_group_of_gpu_bundles_on_one_node(
        gpu_cluster, placements):
    _, nodes = gpu_cluster
    tp2 = [p for p in placements["probes"] if p["engine_kwargs"]["tensor_parallel_size"] == 2]
    # Two passes in one driver: the second got the GPUs back (it waited forever while
    # the first pass's placement group outlived its engine).
    assert len(tp2) == 2 and tp2[0]["placement_group"] != tp2[1]["placement_group"]
    for probe in tp2:
        group = placements["groups"][probe["placement_group"]]
        assert group["strategy"] == "STRICT_PACK"
        bundles = list(group["bundles"].values())
        assert len(bundles) == 2
        assert all(b["GPU"] == 1 and b[ACCEL] > 0 for b in bundles)
        # Both bundles on the one node with 2 GPUs; each worker got its own GPU there.
        assert set(group["bundles_to_node_id"].values()) == {nodes["gpu2"]}
        workers = probe["bundle_workers"]
        assert {w["node_id"] for w in workers} == {nodes["gpu2"]}
        assert sorted(g for w in workers for g in w["gpu_ids"]) == [0, 1]
        assert probe["engine_kwargs"]["distributed_executor_backend"] == "ray"
    # No engine's placement group outlives its pass.
    assert {g["state"] for g in placements["groups"].values()} == {"REMOVED"}


def test_single_gpu_engine_takes_a_gpu_of_the_requested_accelerator_type(gpu_cluster, placements):
    _, nodes = gpu_cluster
    tp1 = next(p for p in placements["probes"] if p["engine_kwargs"]["tensor_parallel_size"] == 1)
    assert tp1["placement_group"] is None
    assert tp1["node_id"] in (nodes["gpu1"], nodes["gpu2"])
    assert len(tp1["gpu_ids"]) == 1
    # Both label-findings runs wrote a row (an error row: the probe's "{}" is no label set)
    # for every report: the job around the engine ran to the end.
    for run in ("tp1", "tp2", "tp2_again"):
        manifest = json.loads((placements["root"] / run / "manifest.json").read_text())
        assert manifest["counts"]["results_rows"] + manifest["counts"]["error_rows"] == 6


def test_classifier_and_segmentation_actors_run_on_gpu_nodes_with_a_gpu(gpu_cluster, placements):
    _, nodes = gpu_cluster
    gpu_nodes = {nodes["gpu1"], nodes["gpu2"]}
    gpu_actors = [a for a in placements["actors"]
                  if (a.get("required_resources") or {}).get("GPU")]
    # Ray Data names both actor pools MapWorker(MapBatches(StageWorker)): one per job.
    stage_workers = [a for a in gpu_actors if "StageWorker" in a["class_name"]]
    assert len(stage_workers) == 2, gpu_actors
    for actor in gpu_actors:
        assert actor["node_id"] in gpu_nodes, actor
    root = placements["root"]
    labels = pd.read_parquet(root / "classifier_out" / "results")
    assert len(labels) == 6
    seg = json.loads((root / "seg" / "manifest.json").read_text())
    assert seg["counts"]["results_rows"] >= 1 and seg["counts"]["error_rows"] == 0


def test_cpu_stages_stay_off_gpu_nodes(gpu_cluster, placements):
    _, nodes = gpu_cluster
    gpu_nodes = {nodes["gpu1"], nodes["gpu2"]}
    off = []
    for kind, items in (("actor", placements["actors"]), ("task", placements["tasks"])):
        for item in items:
            if kind == "task" and item.get("type") != "NORMAL_TASK":
                continue  # an actor's method calls run where the actor is
            needs = item.get("required_resources") or {}
            # GPU work, and what runs inside a GPU placement group (a tensor-parallel
            # engine's own actor holds no GPU, its workers do), belongs there.
            if needs.get("GPU") or item.get("placement_group_id") or not item.get("node_id"):
                continue
            if item["node_id"] in gpu_nodes:
                off.append((kind, item.get("name") or item.get("class_name"), needs))
    assert not off, off
