"""`serve run serve/rules.yaml` answers an overload burst with JSON 503s carrying
Retry-After, with nothing set in the environment (issue 18): the shipped config's
controller_options hand the proxy middleware to the proxies Serve starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from serve_fixtures import free_port

REPO = Path(__file__).resolve().parents[1]
HOOK = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"


def test_every_shipped_serve_config_enables_the_json_proxy_errors():
    for path in sorted((REPO / "serve").glob("*.yaml")):
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        env = config["controller_options"]["runtime_env"]["env_vars"]
        assert env[HOOK] == "ctray.serving.proxy:middlewares", path


def _post(url: str, body: bytes) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.mark.extended  # CI: test_serving's overload test, and the chaos Serve test's 503s through serve/rules.yaml's proxy hook
def test_serve_run_overload_burst_gets_json_503_with_retry_after(tmp_path):
    config = yaml.safe_load((REPO / "serve" / "rules.yaml").read_text(encoding="utf-8"))
    port = free_port()
    config["http_options"]["port"] = port
    deployment = config["applications"][0]["deployments"][0]
    deployment.pop("autoscaling_config", None)
    # One request at a time and a queue of one: a burst must overflow it.
    deployment.update(num_replicas=1, max_ongoing_requests=1, max_queued_requests=1,
                      ray_actor_options={"num_cpus": 0})
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", HOOK)}
    log = open(tmp_path / "serve.log", "w")
    # --address local: a Ray of this test only (never someone else's cluster).
    proc = subprocess.Popen(["serve", "run", str(path), "--address", "local"], env=env,
                            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}/rules/label"
    try:
        deadline = time.time() + 300
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if _post(url, json.dumps({"texts": ["No effusion."]}).encode())[0] == 200:
                    break
            except OSError:
                pass
            assert time.time() < deadline, "serve run did not come up"
            time.sleep(1)
        text = "Bilateral pleural effusion with adjacent atelectasis. No pneumothorax. " * 20
        body = json.dumps({"texts": [text] * 200}).encode()
        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(lambda _: _post(url, body), range(32)))
    finally:
        proc.send_signal(signal.SIGINT)  # serve run shuts Serve and its local Ray down
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers of this test's group only
        except ProcessLookupError:
            pass
        log.close()
    statuses = [a[0] for a in answers]
    assert 200 in statuses and 503 in statuses, statuses
    for status, headers, payload in answers:
        if status == 503:
            headers = {k.lower(): v for k, v in headers.items()}
            assert headers["content-type"] == "application/json"
            assert headers["retry-after"] == "1"
            assert "detail" in json.loads(payload)
