"""cluster.yaml (checked as `ray up` checks it) and a real `ray job submit` round trip.

The job test starts its own Ray head (separate ports and temp dir, token auth on,
dashboard on loopback) in a process group of its own, submits ``jobs/stats_text.py``
through the Job Submission API with the repository as working_dir, checks the job's
outputs, then stops exactly the processes it started.
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ctray.local_cluster import head_port_flags
from serve_fixtures import free_port

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text(encoding="utf-8"))


def test_cluster_yaml_has_what_the_autoscaler_needs(cluster):
    import ray

    assert cluster["cluster_name"]
    assert cluster["provider"]["type"] == "aws" and cluster["provider"]["region"]
    assert cluster["auth"]["ssh_user"]
    assert cluster["idle_timeout_minutes"] > 0
    types = cluster["available_node_types"]
    assert cluster["head_node_type"] in types
    workers = {k: v for k, v in types.items() if k != cluster["head_node_type"]}
    for name, node in types.items():
        assert node["node_config"]["InstanceType"], name
        assert isinstance(node["resources"], dict), name
    for name, node in workers.items():
        assert 0 <= node["min_workers"] <= node["max_workers"], name
    assert cluster["max_workers"] >= sum(n["min_workers"] for n in workers.values())
    assert cluster["max_workers"] >= max(n["max_workers"] for n in workers.values())
    gpu = [n for n in workers.values() if n["resources"].get("GPU", 0) >= 1]
    cpu = [n for n in workers.values() if not n["resources"].get("GPU")]
    assert gpu and cpu
    # The project is installed on every node, with vLLM on the GPU type.
    assert any("pip install" in c and "/home/ray/ctray" in c for c in cluster["setup_commands"])
    assert all("[gpu" in c for n in gpu for c in n["worker_setup_commands"])
    assert cluster["file_mounts"]["/home/ray/ctray"] == "."
    # Images must run the Ray and Python versions this project pins.
    images = [cluster["docker"]["image"], cluster["docker"]["head_image"],
              *[n["docker"]["worker_image"] for n in workers.values() if "docker" in n]]
    for image in images:
        assert f":{ray.__version__}-py311" in image, image


def test_cluster_yaml_passes_rays_own_validation(cluster):
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.commands import prepare_config
    from ray.autoscaler._private.util import validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cluster, schema)
    # What `ray up` runs before it calls AWS: defaults filled in, then validated.
    validate_config(prepare_config(copy.deepcopy(cluster)))
    broken = copy.deepcopy(cluster)
    broken["head_node_type"] = "no_such_type"
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(prepare_config(broken))


# ---------------------------------------------------------------------- ray job submit

class LocalHead:
    """``ray start --head --block`` in its own process group; stopped by pid/pgid only."""

    def __init__(self) -> None:
        self.token = secrets.token_hex(16)
        self.temp_dir = tempfile.mkdtemp(prefix="ctray-rt-", dir="/tmp")  # short socket paths
        self.dashboard_port = free_port()
        self.cmd = ["ray", "start", "--head", "--block", "--num-cpus=2",
                    "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                    f"--temp-dir={self.temp_dir}", "--disable-usage-stats",
                    *head_port_flags(free_port(), self.dashboard_port)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        # Token auth as on a real cluster, with a token of this test only.
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token)
        self.log = open(Path(self.temp_dir) / "ray_start.log", "w")
        self.proc = subprocess.Popen(self.cmd, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def client(self, timeout: float = 120):
        from ray.job_submission import JobSubmissionClient

        deadline = time.time() + timeout
        while True:
            try:
                return JobSubmissionClient(
                    self.url, headers={"Authorization": f"Bearer {self.token}"})
            except Exception:  # noqa: BLE001 - dashboard still starting
                if self.proc.poll() is not None or time.time() > deadline:
                    raise
                time.sleep(1)

    def stop(self) -> None:
        pgid = self.proc.pid  # start_new_session: the group id is the leader's pid
        self.proc.send_signal(signal.SIGTERM)  # Ray's --block handler stops its children
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        time.sleep(2)
        try:
            os.killpg(pgid, signal.SIGKILL)  # stragglers of this group only
        except ProcessLookupError:
            pass
        if self.proc.poll() is None:
            self.proc.wait(timeout=10)
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.extended  # CI: tests/test_local_cluster.py submits through the Job API and the CLI
def test_job_submission_to_a_local_head(tmp_path):
    from ray.job_submission import JobStatus

    head = LocalHead()
    try:
        client = head.client()
        output = tmp_path / "stats-text"
        job_id = client.submit_job(
            entrypoint=f"python jobs/stats_text.py --config configs/stats_text.yaml "
                       f"--limit 12 --output {output}",
            runtime_env={"working_dir": str(REPO),
                         "excludes": ["runs/", ".git/", ".pytest_cache/", ".benchmarks/",
                                      "*.egg-info/", "__pycache__/"]})
        deadline = time.time() + 300
        while (status := client.get_job_status(job_id)) not in (
                JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            assert time.time() < deadline, "job did not finish"
            time.sleep(1)
        logs = client.get_job_logs(job_id)
        assert status == JobStatus.SUCCEEDED, logs[-3000:]
        assert "12 rows done, 0 failed" in logs
        # docs/cluster.md's command as written (the CLI, token auth through RAY_AUTH_MODE),
        # without --output: refused, since runs/ would land in Ray's temporary working dir.
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(RAY_ADDRESS=head.url, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=head.token)
        proc = subprocess.run(
            ["ray", "job", "submit", "--working-dir", ".", "--", "python", "jobs/stats_text.py",
             "--config", "configs/stats_text.yaml", "--limit", "3"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        printed = proc.stdout + proc.stderr
        assert "AuthenticationError" not in printed, printed[-3000:]
        assert "would be written into Ray's temporary working directory" in printed, printed[-3000:]
        assert "working_dir_files/_ray_pkg_" in printed
    finally:
        head.stop()

    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["counts"]["results_rows"] == 12 and manifest["counts"]["error_rows"] == 0
    results = pd.concat(pd.read_parquet(p) for p in (output / "results").glob("*.parquet"))
    source = pd.read_csv(REPO / "ctray" / "data" / "sample_reports_ja.csv").head(12)
    assert sorted(results["report_id"]) == sorted(source["VolumeName"])
    assert (results["lang"] == "ja").all() and (results["text_words"] > 0).all()
