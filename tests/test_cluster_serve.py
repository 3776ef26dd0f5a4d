"""Ray Serve on a real 3-node cluster (head without task CPUs + 2 workers).

The rules labeling app (serve/rules.yaml, as deployed by `serve deploy`) runs with 2
replicas on different worker nodes while a bounded client on 127.0.0.1 sends steady
traffic; one replica's node is killed (raylet and workers, no drain) and a fresh node
joins as the autoscaler would add one. Counted: non-200 replies, seconds until traffic
is all 200 again, and that Serve brings the app back to 2 running replicas. Then Serve
autoscaling (the app's autoscaling_config, with short delays): replicas go up under
load and down after it.

On one machine every node has the same IP, so the HTTP proxy runs on the head only
(``proxy_location: HeadOnly``); on a real cluster ``EveryNode`` behind a load balancer
(serve/*.yaml) also survives the loss of a node's proxy.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from cluster_fixtures import LocalCluster, wait_for
from serve_fixtures import free_port

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
APP, DEPLOYMENT = "rules", "RuleLabelerService"
TEXT = "Small right pleural effusion. No pneumothorax. Mild cardiomegaly."


def serve_config(port: int, deployment: dict) -> dict:
    config = yaml.safe_load((REPO / "serve" / "rules.yaml").read_text())
    config["http_options"]["port"] = port
    config["proxy_location"] = "HeadOnly"
    dep = config["applications"][0]["deployments"][0]
    assert dep["name"] == DEPLOYMENT
    dep.pop("autoscaling_config", None)
    dep.update(deployment)
    return config


def replicas(dashboard: str) -> list[dict]:
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    details = ServeSubmissionClient(dashboard).get_serve_details()
    app = details.get("applications", {}).get(APP)
    if not app:
        return []
    deployment = app.get("deployments", {}).get(DEPLOYMENT)  # absent while deploying
    return [r for r in (deployment or {}).get("replicas", []) if r["state"] == "RUNNING"]


class Load:
    """``workers`` threads posting one report each, back to back, recording (time,
    status); a reply that does not come is status 0."""

    def __init__(self, url: str, workers: int) -> None:
        self.url, self.records, self.bodies, self._stop = url, [], [], threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(workers)]
        for t in self.threads:
            t.start()

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                try:
                    reply = client.post(self.url, json={"texts": [TEXT]})
                    status = reply.status_code
                    if status != 200:
                        self.bodies.append((status, dict(reply.headers), reply.text[:300]))
                except httpx.HTTPError as e:
                    status = 0
                    self.bodies.append((0, {}, repr(e)[:300]))
                self.records.append((time.time(), status))

    def stop(self) -> list[tuple[float, int]]:
        self._stop.set()
        for t in self.threads:
            t.join(timeout=60)
        return sorted(self.records)


@pytest.fixture(scope="module")
def cluster():
    c = LocalCluster(workers=2, worker_cpus=2)
    yield c
    c.shutdown()


def test_a_replica_node_dies_under_load_and_serve_recovers(cluster):
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    port = free_port()
    serve = ServeSubmissionClient(cluster.dashboard_url)
    serve.deploy_applications(serve_config(port, {
        "num_replicas": 2, "max_replicas_per_node": 1, "ray_actor_options": {"num_cpus": 1}}))
    try:
        running = wait_for(lambda: len(r := replicas(cluster.dashboard_url)) == 2 and r, 240,
                           "2 running replicas")
        nodes = {r["node_id"] for r in running}
        assert len(nodes) == 2  # one replica per worker node
        url = f"http://127.0.0.1:{port}/rules/label"
        wait_for(lambda: httpx.post(url, json={"texts": [TEXT]}, timeout=30).status_code == 200,
                 120, "the app to answer")

        load = Load(url, workers=4)
        time.sleep(5)
        victim = next(n for n in cluster.workers if n.node_id in nodes)
        killed_at = time.time()
        cluster.kill_worker(victim)  # and a fresh node joins, as the autoscaler adds one
        wait_for(lambda: len(replicas(cluster.dashboard_url)) == 2, 240,
                 "Serve to restore 2 replicas")
        time.sleep(10)  # steady traffic after recovery
        records = load.stop()
        victim_id = victim.node_id
        after_nodes = {r["node_id"] for r in replicas(cluster.dashboard_url)}
    finally:
        serve.delete_applications()

    before = [s for t, s in records if t < killed_at]
    after = [(t, s) for t, s in records if t >= killed_at]
    assert before and all(s == 200 for s in before)
    failed = [(t, s) for t, s in after if s != 200]
    recovered_at = max((t for t, _ in failed), default=killed_at)
    tail = [s for t, s in after if t > recovered_at]
    print(f"serve node kill: {len(records)} requests, {len(failed)} non-200 after the kill "
          f"(statuses {sorted({s for _, s in failed})}), all 200 again "
          f"{recovered_at - killed_at:.1f} s after it")
    assert len(tail) >= 20 and all(s == 200 for s in tail)
    # A request lost with its replica is a retryable 503 (ctray.serving.proxy), never a 500.
    assert all(status == 503 and headers.get("retry-after") and "retry" in text
               for status, headers, text in load.bodies), load.bodies
    assert recovered_at - killed_at < 120
    # The replica that died was replaced on a live node, one replica per node again.
    assert victim_id not in after_nodes and len(after_nodes) == 2
    assert after_nodes <= cluster.alive_node_ids()


def test_serve_autoscaling_scales_up_under_load_and_down_after(cluster):
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    port = free_port()
    serve = ServeSubmissionClient(cluster.dashboard_url)
    serve.deploy_applications(serve_config(port, {
        "autoscaling_config": {"min_replicas": 1, "max_replicas": 2,
                               "target_ongoing_requests": 1, "upscale_delay_s": 2,
                               "downscale_delay_s": 5, "metrics_interval_s": 1,
                               "look_back_period_s": 2},
        "ray_actor_options": {"num_cpus": 1}}))
    try:
        wait_for(lambda: len(replicas(cluster.dashboard_url)) == 1, 240, "1 running replica")
        url = f"http://127.0.0.1:{port}/rules/label"
        load = Load(url, workers=8)
        try:
            wait_for(lambda: len(replicas(cluster.dashboard_url)) == 2, 120,
                     "a second replica under load")
        finally:
            records = load.stop()
        assert records and all(s == 200 for _, s in records)
        wait_for(lambda: len(replicas(cluster.dashboard_url)) == 1, 120,
                 "back to 1 replica after the load")
    finally:
        serve.delete_applications()
