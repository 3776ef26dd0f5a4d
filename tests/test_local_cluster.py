"""cluster.yaml on one machine: Ray's fake multi-node autoscaler (ctray.local_cluster).

A head with no task CPUs, as cluster.yaml's: a ctray job submitted through the Job API
needs CPUs, so the autoscaler starts worker nodes of cluster.yaml's CPU type (never its
GPU type for CPU work); once the job is done and the idle timeout passes, it removes them.
The cluster runs on its own ports and temp dir and is stopped by that temp dir only.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster_yaml() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text(encoding="utf-8"))


def test_fake_config_keeps_the_node_types_and_their_resources(cluster_yaml):
    from ctray.local_cluster import FAKE_HEAD_TYPE, fake_autoscaling_config

    cfg = fake_autoscaling_config(cluster_yaml, "127.0.0.1:7000", worker_cpus=2,
                                  max_workers_per_type=2, idle_timeout_s=30)
    types = cfg["available_node_types"]
    workers = {k for k in cluster_yaml["available_node_types"] if k != cluster_yaml["head_node_type"]}
    assert set(types) == workers | {FAKE_HEAD_TYPE} and cfg["head_node_type"] == FAKE_HEAD_TYPE
    assert types[FAKE_HEAD_TYPE]["resources"] == cluster_yaml["available_node_types"]["head"]["resources"]
    for name in workers:
        original = cluster_yaml["available_node_types"][name]["resources"]
        scaled = types[name]["resources"]
        assert scaled["CPU"] == min(original["CPU"], 2)
        assert {k: v for k, v in scaled.items() if k not in ("CPU", "object_store_memory")} == \
            {k: v for k, v in original.items() if k != "CPU"}  # GPU, accelerator type kept
        assert types[name]["max_workers"] <= 2
    assert cfg["provider"]["type"] == "fake_multinode"
    assert cfg["provider"]["gcs_address"] == "127.0.0.1:7000"  # never the host's port 6379
    assert cfg["idle_timeout_minutes"] == pytest.approx(0.5)
    assert cfg["max_workers"] == sum(t["max_workers"] for n, t in types.items() if n in workers)
    # Ray's own schema accepts it.
    from ray.autoscaler._private.util import validate_config

    validate_config(cfg)


def test_a_config_without_its_head_type_is_refused(cluster_yaml):
    from ctray.local_cluster import fake_autoscaling_config

    broken = {**cluster_yaml, "head_node_type": "nope"}
    with pytest.raises(ValueError, match="head_node_type 'nope'"):
        fake_autoscaling_config(broken, "127.0.0.1:7000")


def test_a_missing_or_broken_cluster_yaml_is_one_ctray_line(tmp_path, capsys):
    from ctray.local_cluster import main

    assert main(["--cluster-yaml", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ctray: ") and "nope.yaml" in err and "Traceback" not in err
    broken = tmp_path / "broken.yaml"
    broken.write_text("available_node_types: {a: {resources: {CPU: 1}}}\nhead_node_type: b\n")
    assert main(["--cluster-yaml", str(broken)]) == 2
    assert "head_node_type 'b'" in capsys.readouterr().err
    broken.write_text("- just a list\n")
    assert main(["--cluster-yaml", str(broken)]) == 2
    assert "not a Ray cluster config" in capsys.readouterr().err


@pytest.mark.slow
def test_a_job_scales_cpu_workers_up_and_idle_nodes_down(tmp_path, cluster_yaml):
    from ray.job_submission import JobSubmissionClient

    from ctray.local_cluster import LocalAutoscalingCluster
    from cluster_fixtures import wait_for, wait_job

    cluster = LocalAutoscalingCluster(REPO / "cluster.yaml", worker_cpus=2,
                                      max_workers_per_type=2, idle_timeout_s=5)
    try:
        cluster.wait_ready()
        client = JobSubmissionClient(cluster.dashboard_url)

        def alive_workers() -> list:
            from ray.util.state import list_nodes

            return [n for n in list_nodes(address=cluster.dashboard_url, raise_on_missing_output=False)
                    if n.state == "ALIVE" and not n.is_head_node]

        assert alive_workers() == []  # min_workers 0: the head alone
        output = tmp_path / "stats"
        job = client.submit_job(
            entrypoint=f"python jobs/stats_text.py --config configs/stats_text.yaml "
                       f"--limit 12 --output {output}",
            runtime_env={"working_dir": str(REPO), "env_vars": cluster.env(),
                         "excludes": ["runs/", ".git/", ".pytest_cache/", "*.egg-info/",
                                      "__pycache__/", "tests/data/"]})
        seen: list = []

        def job_done() -> bool:
            seen.extend(alive_workers())
            return str(client.get_job_status(job)).split(".")[-1] in (
                "SUCCEEDED", "FAILED", "STOPPED")

        wait_for(job_done, 600, "the job on the autoscaling cluster", poll=2)
        status = wait_job(client, job, 30)
        logs = client.get_job_logs(job)
        assert status == "SUCCEEDED", logs[-3000:]
        assert "12 rows done, 0 failed" in logs
        # Scaled up: CPU workers of cluster.yaml's type, no GPU node for CPU work.
        started = {n.node_id: n.resources_total for n in seen}
        assert started, "no worker node was started"
        assert all(r.get("CPU") == 2 and "GPU" not in r for r in started.values()), started
        # docs/cluster.md's command as written (the CLI uploads the working dir), without
        # --output: refused, since runs/ would land in Ray's temporary working dir.
        import os
        import subprocess

        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(cluster.env(), RAY_ADDRESS=cluster.dashboard_url)
        proc = subprocess.run(
            ["ray", "job", "submit", "--working-dir", ".", "--", "python", "jobs/stats_text.py",
             "--config", "configs/stats_text.yaml", "--limit", "3"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        printed = proc.stdout + proc.stderr
        assert "would be written into Ray's temporary working directory" in printed, printed[-3000:]
        assert "working_dir_files/_ray_pkg_" in printed
        # Scaled down: idle past the timeout, every worker node is removed.
        wait_for(lambda: not alive_workers(), 240, "idle worker nodes to be removed", poll=2)
    finally:
        cluster.stop()
    results = pd.concat(pd.read_parquet(p) for p in (output / "results").glob("*.parquet"))
    assert len(results) == 12
    assert not Path(cluster.temp_dir).exists()
