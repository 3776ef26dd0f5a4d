"""Try a cluster config on one machine: Ray's fake multi-node autoscaler with the node
types of ``cluster.yaml``, scaled down to this machine.

    python -m ctray.local_cluster --cluster-yaml cluster.yaml [--worker-cpus 2]
        [--max-workers-per-type 2] [--idle-timeout-s 60]

starts a head (no task CPUs, as ``cluster.yaml``'s head), dashboard and Job API on
127.0.0.1, and Ray's autoscaler with the ``fake_multinode`` provider: a job that asks for
more than the head has makes the autoscaler start worker nodes of the config's types
(each a real raylet on this machine, with the type's custom resources, ``GPU`` and
accelerator type included), and nodes idle for ``--idle-timeout-s`` are removed. Submit
jobs with ``RAY_ADDRESS=<dashboard url> ray job submit --working-dir . -- python jobs/...``.
Ctrl-C stops exactly this cluster's processes.

Why not ``ray.cluster_utils.AutoscalingCluster``: its start and shutdown run ``ray stop
--force``, which ends every Ray process on the machine (other users' runs, other tests).
Here the head runs on ports and a temp dir of its own, the fake provider is told the
head's GCS address (its default is port 6379 of this host, which may be somebody else's
Ray), and the fake worker nodes, which take the head's temp dir, are stopped by that
temp dir only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

#: the fake provider tags its head with this node type, so the generated config uses it
FAKE_HEAD_TYPE = "ray.head.default"
#: what a local cluster's processes run with, and so what every process joining it needs:
#: token auth off (localhost only), said explicitly, since with RAY_AUTH_MODE unset Ray
#: turns it on whenever ~/.ray/auth_token exists
LOCAL_CLUSTER_ENV = {"RAY_AUTH_MODE": "disabled"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def head_port_flags(port: int, dashboard_port: int) -> list[str]:
    """``ray start --head`` flags putting every listening port of the head on a free one
    (several Rays share this machine; Ray's defaults would collide)."""
    ports = {"--port": port, "--dashboard-port": dashboard_port,
             "--ray-client-server-port": free_port(),
             "--dashboard-agent-listen-port": free_port(),
             "--dashboard-agent-grpc-port": free_port(),
             "--metrics-export-port": free_port(), "--runtime-env-agent-port": free_port()}
    return [f"{flag}={value}" for flag, value in ports.items()]


def fake_autoscaling_config(cluster: dict[str, Any], gcs_address: str, worker_cpus: float = 2,
                            max_workers_per_type: int = 2, idle_timeout_s: float = 60,
                            object_store_mb: int = 100) -> dict[str, Any]:
    """``cluster`` (a parsed cluster.yaml) as a ``fake_multinode`` autoscaler config:
    the same worker node types by name, their custom resources (``GPU``,
    ``accelerator_type:*``, ...) kept, CPUs capped at ``worker_cpus`` (logical CPUs: may
    exceed the machine's), at most ``max_workers_per_type`` nodes of each type."""
    if not isinstance(cluster, dict) or not isinstance(cluster.get("available_node_types"), dict):
        raise ValueError("not a Ray cluster config (no available_node_types mapping)")
    types = cluster["available_node_types"]
    head_type = cluster.get("head_node_type")
    if head_type not in types:
        raise ValueError(f"head_node_type {head_type!r} is not one of available_node_types "
                         f"({sorted(types)})")
    workers: dict[str, Any] = {}
    for name, spec in types.items():
        if name == head_type:
            continue
        resources = dict(spec.get("resources") or {})
        if "CPU" in resources:
            resources["CPU"] = min(float(resources["CPU"]), float(worker_cpus))
        resources["object_store_memory"] = object_store_mb * 1024 * 1024
        workers[name] = {"resources": resources, "node_config": {},
                         "min_workers": min(int(spec.get("min_workers", 0)), max_workers_per_type),
                         "max_workers": min(int(spec.get("max_workers", max_workers_per_type)),
                                            max_workers_per_type)}
    if not workers:
        raise ValueError("the cluster config has no worker node type")
    head_resources = dict(types[head_type].get("resources") or {})
    return {
        "cluster_name": f"{cluster.get('cluster_name', 'ctray')}-local",
        "max_workers": sum(w["max_workers"] for w in workers.values()),
        "upscaling_speed": float(cluster.get("upscaling_speed", 1.0)),
        "idle_timeout_minutes": idle_timeout_s / 60.0,
        "provider": {"type": "fake_multinode", "gcs_address": gcs_address,
                     "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True},
        "available_node_types": {FAKE_HEAD_TYPE: {"resources": head_resources,
                                                  "node_config": {}, "max_workers": 0},
                                 **workers},
        "head_node_type": FAKE_HEAD_TYPE,
        "auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [],
        "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def kill_processes_naming(text: str) -> int:
    """SIGKILL every process whose command line contains ``text`` (this cluster's temp
    dir: its GCS, raylets, dashboard, agents, autoscaler; their workers follow)."""
    import psutil

    killed = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.pid != os.getpid() and text in " ".join(proc.info["cmdline"] or ()):
                proc.kill()
                killed.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    # Wait for them: a process still dying can write into the temp dir after it is removed.
    psutil.wait_procs(killed, timeout=10)
    return len(killed)


class LocalAutoscalingCluster:
    """A head started with ``ray start --head --block --autoscaling-config`` (fake
    provider) in its own process group, temp dir and ports."""

    def __init__(self, cluster_yaml: str | Path, worker_cpus: float = 2,
                 max_workers_per_type: int = 2, idle_timeout_s: float = 60,
                 object_store_mb: int = 100, temp_dir: str | None = None) -> None:
        cluster = yaml.safe_load(Path(cluster_yaml).read_text())
        self.port = free_port()
        self.gcs_address = f"127.0.0.1:{self.port}"
        self.dashboard_port = free_port()
        self.config = fake_autoscaling_config(cluster, self.gcs_address, worker_cpus,
                                              max_workers_per_type, idle_timeout_s,
                                              object_store_mb)
        # Short path: raylet socket names must fit in 107 bytes.
        self.temp_dir = temp_dir or tempfile.mkdtemp(prefix="ctray-as-", dir="/tmp")
        self.config_path = Path(self.temp_dir) / "autoscaling.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        head_resources = dict(self.config["available_node_types"][FAKE_HEAD_TYPE]["resources"])
        self.cmd = ["ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1",
                    f"--num-cpus={head_resources.pop('CPU', 0)}",
                    f"--num-gpus={head_resources.pop('GPU', 0)}",
                    f"--resources={json.dumps({**head_resources, 'head': 1})}",
                    f"--autoscaling-config={self.config_path}",
                    "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                    f"--temp-dir={self.temp_dir}", "--disable-usage-stats",
                    *head_port_flags(self.port, self.dashboard_port)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        # Localhost only; token auth is off so local clients need no token (a real
        # cluster keeps it on: docs/cluster.md).
        env.update(self.env(), RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1")
        self.log_path = Path(self.temp_dir) / "ray_start.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.cmd, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def env(self) -> dict[str, str]:
        """What a process joining this cluster needs (driver or ``ray job submit``)."""
        return dict(LOCAL_CLUSTER_ENV)

    def wait_ready(self, timeout: float = 240) -> None:
        """Until the Job API answers (the head and dashboard are up)."""
        from ray.job_submission import JobSubmissionClient

        deadline = time.time() + timeout
        while True:
            try:
                JobSubmissionClient(self.dashboard_url).list_jobs()
                return
            except Exception as e:  # noqa: BLE001 - still starting
                if self.proc.poll() is not None:
                    raise RuntimeError(f"ray start exited ({self.proc.returncode}); see "
                                       f"{self.log_path}") from e
                if time.time() > deadline:
                    raise TimeoutError(f"the local cluster did not start in {timeout:.0f} s; "
                                       f"see {self.log_path}") from e
                time.sleep(1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # --block: Ray stops its own children
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        kill_processes_naming(self.temp_dir)  # fake worker nodes, stragglers
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()
        remove_tree(self.temp_dir)


def remove_tree(path: str, timeout: float = 30) -> None:
    """Remove ``path``, retrying while late writers (a worker's last log line, a
    dying agent) recreate files under it; CI once found the temp dir left behind."""
    deadline = time.time() + timeout
    while True:
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.exists(path) or time.time() > deadline:
            return
        kill_processes_naming(path)
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ctray.local_cluster", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cluster-yaml", default="cluster.yaml")
    ap.add_argument("--worker-cpus", type=float, default=2,
                    help="logical CPUs per worker node (cap on the config's)")
    ap.add_argument("--max-workers-per-type", type=int, default=2)
    ap.add_argument("--idle-timeout-s", type=float, default=60)
    args = ap.parse_args(argv)
    try:
        cluster = LocalAutoscalingCluster(args.cluster_yaml, args.worker_cpus,
                                          args.max_workers_per_type, args.idle_timeout_s)
    except (OSError, ValueError, yaml.YAMLError) as e:
        print(f"ctray: {args.cluster_yaml}: {e}", file=sys.stderr)
        return 2
    try:
        cluster.wait_ready()
        types = {k: v["resources"] for k, v in cluster.config["available_node_types"].items()}
        print(f"local autoscaling cluster up: dashboard {cluster.dashboard_url}, GCS "
              f"{cluster.gcs_address}, temp dir {cluster.temp_dir}\nnode types: "
              f"{json.dumps(types)}\nsubmit: RAY_ADDRESS={cluster.dashboard_url} "
              "RAY_AUTH_MODE=disabled ray job submit --working-dir . -- python jobs/<job>.py "
              "--config configs/<job>.yaml --output /abs/path\nCtrl-C stops it.", flush=True)
        while cluster.proc.poll() is None:
            time.sleep(1)
        return 1
    except KeyboardInterrupt:
        return 0
    except (RuntimeError, TimeoutError) as e:
        print(f"ctray: local cluster: {e}", file=sys.stderr)
        return 2
    finally:
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
