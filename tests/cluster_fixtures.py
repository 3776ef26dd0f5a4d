"""A real multi-node Ray cluster on one machine, for tests that kill nodes.

``LocalCluster`` wraps ``ray.cluster_utils.Cluster``: a head with no task CPUs (as
``cluster.yaml``'s head) plus worker nodes, each a real raylet with its own object
store, on ports and a temp dir of this cluster only. Killing a worker node kills its
raylet and every worker process on it, as a spot preemption does.

What this deliberately avoids, because other Ray instances share the machine:
- ``ray stop`` and ``AutoscalingCluster`` (whose start/shutdown run ``ray stop --force``);
- ``Cluster``'s write/delete of ``/tmp/ray/ray_current_cluster``: while that file names
  this cluster, anybody's ``ray.init()`` on the machine would join it instead of starting
  its own Ray, and deleting it would cut another user's ``ray.init("auto")``. The file
  is written in this cluster's temp dir instead, where its Job API looks.
The test process never connects to the cluster (no ``ray.init``): jobs go through the
Job Submission API, as users run them, so this fixture mixes with the session-wide
local Ray of other tests in the same pytest process.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

from ctray.local_cluster import LOCAL_CLUSTER_ENV as CLUSTER_ENV  # what joining processes need
from serve_fixtures import free_port

REPO = Path(__file__).resolve().parents[1]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class _SlowClock:
    """``time`` for ray._private.node while a node starts: Ray waits a fixed 30 s
    (``raylet_start_wait_time_s``, not configurable) for a new raylet to register, which
    a loaded 2-core CI machine can exceed; read through this clock it waits 4x longer.
    The dashboard's 60 s start-up limit is raised the same way (below)."""

    def __getattr__(self, name):
        return getattr(time, name)

    @staticmethod
    def monotonic() -> float:
        return time.monotonic() / 4




@contextlib.contextmanager
def _no_shared_address_file():
    import ray._common.utils
    import ray._private.node
    import ray._private.ray_constants
    import ray._private.utils

    # Token auth off for this cluster's processes, said explicitly: with RAY_AUTH_MODE
    # unset, Ray turns token auth on whenever ~/.ray/auth_token exists, a file any other
    # Ray user on the machine may create or regenerate while this cluster runs.
    with mock.patch.object(ray._private.utils, "write_ray_address", lambda *a, **k: None), \
            mock.patch.object(ray._common.utils, "reset_ray_address", lambda *a, **k: None), \
            mock.patch.dict(os.environ, CLUSTER_ENV), \
            mock.patch.object(ray._private.node, "time", _SlowClock()), \
            mock.patch.object(ray._private.ray_constants, "RAY_DASHBOARD_STARTUP_TIMEOUT_S",
                              max(240, ray._private.ray_constants.RAY_DASHBOARD_STARTUP_TIMEOUT_S)):
        yield


class LocalCluster:
    """Head (0 task CPUs, dashboard + Job API on 127.0.0.1) and ``workers`` nodes."""

    def __init__(self, workers: int = 2, worker_cpus: float = 2,
                 worker_resources: dict[str, float] | None = None,
                 object_store_mb: int = 80, dashboard: bool = True) -> None:
        from ray.cluster_utils import Cluster

        # Short path: raylet socket names must fit in 107 bytes.
        self.temp_dir = tempfile.mkdtemp(prefix="ctray-cl-", dir="/tmp")
        self.worker_cpus = worker_cpus
        self.worker_resources = dict(worker_resources or {})
        self.object_store = object_store_mb * 1024 * 1024
        self.dashboard_port = free_port()
        head = dict(num_cpus=0, temp_dir=self.temp_dir, object_store_memory=self.object_store,
                     include_dashboard=dashboard, dashboard_host="127.0.0.1",
                     dashboard_port=self.dashboard_port,
                     dashboard_agent_listen_port=free_port(),
                     ray_client_server_port=free_port(), resources={"head": 1})
        # Ray gives a starting node 30 s (fixed) to register; on a loaded machine that can
        # pass, so a failed start is cleaned up (by this cluster's temp dir) and retried.
        for attempt in range(3):
            try:
                with _no_shared_address_file():
                    self.cluster = Cluster(initialize_head=True, head_node_args=head,
                                           shutdown_at_exit=True)
                break
            except Exception:  # noqa: BLE001 - "node timed out during startup"
                kill_processes_of(self.temp_dir)
                if attempt == 2:
                    shutil.rmtree(self.temp_dir, ignore_errors=True)
                    raise
        # The address file in this cluster's own temp dir (as `ray start --temp-dir` writes
        # it): the Job API's supervisor resolves the driver's RAY_ADDRESS from it, and
        # without it falls back to whichever Ray GCS process it finds on the machine.
        import ray._private.utils

        ray._private.utils.write_ray_address(self.cluster.address, self.temp_dir)
        self.workers: list[Any] = []
        self.killed = 0
        try:
            for _ in range(workers):
                self.add_worker()
        except BaseException:
            self.shutdown()
            raise

    # ------------------------------------------------------------------ nodes
    @property
    def address(self) -> str:
        return self.cluster.address

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def client_env(self) -> dict[str, str]:
        """Environment for a process that joins this cluster (``ray.init`` with its
        address): a session-wide local Ray started earlier in the same pytest process
        leaves ``RAY_AUTH_MODE=token`` in ``os.environ`` (``~/.ray/auth_token`` exists),
        and a driver joining this no-auth cluster with it had its actors cancelled
        before they started."""
        return {**os.environ, **CLUSTER_ENV, "RAY_ADDRESS": self.address}

    def add_worker(self, num_cpus: float | None = None, num_gpus: float = 0,
                   resources: dict[str, float] | None = None):
        import uuid

        for attempt in range(3):
            # A name only this node's raylet command line carries: a start that timed
            # out is cleaned up by it, without touching the rest of the cluster.
            tag = f"ctray_node_{uuid.uuid4().hex[:8]}"
            try:
                with _no_shared_address_file():
                    node = self.cluster.add_node(
                        num_cpus=self.worker_cpus if num_cpus is None else num_cpus,
                        num_gpus=num_gpus, temp_dir=self.temp_dir,
                        resources={**self.worker_resources, **(resources or {}), tag: 1},
                        object_store_memory=self.object_store)
                break
            except Exception:  # noqa: BLE001 - "node timed out during startup"
                kill_processes_of(tag)
                if attempt == 2:
                    raise
        self.workers.append(node)
        return node

    def kill_worker(self, node=None, replace: bool = True):
        """Kill a worker node's raylet and workers at once (no graceful drain), as a spot
        preemption does; ``replace`` adds a fresh node like the autoscaler would."""
        node = node or self.workers[0]
        self.workers.remove(node)
        self.cluster.remove_node(node, allow_graceful=False)
        self.killed += 1
        return self.add_worker() if replace else None

    def alive_node_ids(self) -> set[str]:
        return set(self.cluster.global_state._live_node_ids())

    # ------------------------------------------------------------------ jobs
    def job_client(self, timeout: float = 90):
        from ray.job_submission import JobSubmissionClient

        deadline = time.time() + timeout
        while True:
            try:
                return JobSubmissionClient(self.dashboard_url)
            except Exception:  # noqa: BLE001 - dashboard still starting
                if time.time() > deadline:
                    raise
                time.sleep(1)

    def submit(self, client, argv: list[str], env: dict[str, str] | None = None) -> str:
        """Submit ``python <argv>`` from the repository root. The nodes already import
        this checkout (PYTHONPATH from conftest), so no working_dir upload is needed."""
        import shlex

        entry = f"cd {shlex.quote(str(REPO))} && python " + " ".join(map(shlex.quote, argv))
        return client.submit_job(entrypoint=entry,
                                 runtime_env={"env_vars": {**(env or {})}} if env else None)

    def shutdown(self) -> None:
        with _no_shared_address_file():
            try:
                self.cluster.shutdown()
            finally:
                kill_processes_of(self.temp_dir)
                shutil.rmtree(self.temp_dir, ignore_errors=True)


def kill_processes_of(temp_dir: str) -> int:
    """SIGKILL the Ray processes whose command line names ``temp_dir`` (GCS, raylets,
    dashboard, agents of this cluster only; their workers exit with their raylet)."""
    from ctray.local_cluster import kill_processes_naming

    return kill_processes_naming(temp_dir)


def wait_job(client, job_id: str, timeout: float = 240, poll: float = 0.5) -> str:
    deadline = time.time() + timeout
    while (status := str(client.get_job_status(job_id)).split(".")[-1]) not in TERMINAL:
        if time.time() > deadline:
            client.stop_job(job_id)
            raise TimeoutError(f"job {job_id} still {status} after {timeout}s")
        time.sleep(poll)
    return status


def wait_for(predicate, timeout: float, what: str, poll: float = 0.2):
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(poll)


def parquet_count(folder: Path) -> int:
    return len([p for p in folder.glob("*.parquet") if not p.name.startswith(".")]) \
        if folder.exists() else 0
