"""Ray Serve labeling apps: labels, batching, HTTP errors, auth, reconfigure, failures.

One Serve instance for the module (127.0.0.1, free port) runs the apps of
``serve/*.yaml`` (patched to fit a 2-CPU test machine: zero-CPU replicas, one
replica each, tiny models, fake LLM responders) plus two test-only variants: the
rules app with auth on, and a deliberately slow translation app with a queue of one.
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from openai_stub_server import StubOpenAIServer
from serve_fixtures import (UNPARSEABLE, build_findings_checkpoint, deploy, fake_translation,
                            fit_for_tests, free_port, ray_log_files_containing, serve_apps,
                            reseeded_checkpoint)
from tiny_bert import sample_texts

REPO = Path(__file__).resolve().parents[1]
TOKEN = "test-token-7f3a"
# A string that appears in report texts sent below and must never reach a log file.
SECRET_MARKER = "Zanzibarquux"

EN_CASES = {
    "Bilateral pleural effusion. Cardiomegaly.": {"pleural_effusion", "cardiomegaly"},
    "No pleural effusion. Emphysematous changes in both lungs.": {"emphysema"},
    "Trachea and both main bronchi are open.": set(),
}
JA_CASES = {"両側に胸水を認める。心拡大あり。": {"pleural_effusion", "cardiomegaly"},
            "肺気腫を認める。胸水は認めない。": {"emphysema"}}
# The findings model is a Japanese (CT-BERT-JPN style) tiny BERT: Japanese sample reports,
# each longer than one 64-token window, and a short one.
JA_REPORTS = sample_texts("ja")[:6]
TEXTS = [*JA_REPORTS, "食道裂孔ヘルニアを認める。"]




def _fake_backend(responder: str) -> dict:
    return {"kind": "fake", "model": "fake-translator",
            "fake_responder": f"serve_fixtures:{responder}"}


def rule_labeler_as_llm(body: dict) -> str:
    """An OpenAI-compatible "model" that answers the findings JSON with the rule labeler."""
    from ctray.tasks.findings.rules import RuleLabeler
    from ctray.tasks.findings.schema import COLUMN_TO_NAME

    prompt = next(m["content"] for m in body["messages"] if m["role"] == "user")
    if UNPARSEABLE in prompt:
        return "Sorry, I am not sure."
    if '"""' not in prompt:  # the /healthz probe
        return "OK"
    report = prompt.split('"""')[1].strip()
    labels = RuleLabeler("auto").label(report).labels
    return json.dumps({COLUMN_TO_NAME[c]: v for c, v in labels.items()})


def apps_config(checkpoint: str, llm_url: str) -> dict:
    findings = fit_for_tests(serve_apps("findings")[0], health_check_period_s=2)
    findings["deployments"][0]["user_config"].update(
        checkpoint=checkpoint, max_batch_size=8, batch_wait_timeout_s=0.1, max_chars=5000,
        max_items=10)
    rules = fit_for_tests(serve_apps("rules")[0], health_check_period_s=2)
    rules["deployments"][0]["user_config"].update(max_chars=5000, max_items=10)
    secure = copy.deepcopy(rules)
    secure.update(name="rules-secure", route_prefix="/secure")
    # The token reaches the replica through its environment only.
    secure["deployments"][0]["ray_actor_options"]["runtime_env"] = {
        "env_vars": {"CTRAY_SERVE_TOKEN": TOKEN}}
    translate = fit_for_tests(serve_apps("translate")[0], health_check_period_s=2)
    translate["args"]["backend"] = _fake_backend("translate_responder")
    translate["args"]["repair"] = True
    translate["deployments"][0]["user_config"].update(max_batch_size=4, batch_wait_timeout_s=0.1)
    slow = copy.deepcopy(translate)
    slow.update(name="translate-slow", route_prefix="/slow")
    slow["args"]["backend"] = _fake_backend("slow_translate_responder")
    slow["deployments"][0].update(max_ongoing_requests=1, max_queued_requests=1,
                                  user_config={"max_batch_size": 1})
    llm = fit_for_tests(serve_apps("llm_findings")[0], health_check_period_s=2)
    # The production path on a GPU cluster: the replica calls an OpenAI-compatible server.
    llm["args"]["backend"] = {"kind": "openai", "model": "stub-model", "base_url": llm_url}
    llm["deployments"][0]["user_config"].update(max_batch_size=8, batch_wait_timeout_s=0.1)
    return {"applications": [findings, rules, secure, translate, slow, llm]}




@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("findings-models")
    first = build_findings_checkpoint(root / "seed0", seed=0)
    return [first, reseeded_checkpoint(first, root / "seed1", seed=1)]


@pytest.fixture(scope="module")
def llm_server():
    with StubOpenAIServer(rule_labeler_as_llm) as stub:
        yield stub


@pytest.fixture(scope="module")
def server(ray_local, checkpoints, llm_server):
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 60})
    config = apps_config(checkpoints[0], llm_server.base_url)
    deploy(config)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        yield {"http": client, "base": f"http://127.0.0.1:{port}", "config": config}
    serve.shutdown()


def _labels(item: dict) -> set[str]:
    return {c for c, v in item["labels"].items() if v}


# ------------------------------------------------------------------ no Ray needed

def test_serve_configs_are_valid_deploy_configs():
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve.schema import ServeDeploySchema

    from ctray.jobs import JOBS, load_job_modules

    for path in sorted((REPO / "serve").glob("*.yaml")):
        config = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
        assert config.http_options.host == "127.0.0.1", path
        assert config.http_options.request_timeout_s, path
        assert config.logging_config.enable_access_log is True  # no bodies: checked below
        for app in config.applications:
            builder = __import__(app.import_path.split(":")[0], fromlist=["x"])
            built = call_user_app_builder_with_args_if_necessary(
                getattr(builder, app.import_path.split(":")[1]), app.args)
            assert built is not None
            for dep in app.deployments:
                assert dep.max_queued_requests > 0 and dep.max_ongoing_requests > 0
                auto = dep.autoscaling_config
                assert auto["min_replicas"] <= auto["max_replicas"]
                assert auto["target_ongoing_requests"] > 0
                assert dep.ray_actor_options.num_cpus is not None
    load_job_modules()
    assert "bench-serve" in JOBS
    # serve/all.yaml holds exactly the per-app blocks (one `serve deploy` for all apps).
    combined = yaml.safe_load((REPO / "serve" / "all.yaml").read_text())["applications"]
    singles = [serve_apps(n)[0] for n in ("findings", "rules", "llm_findings", "translate")]
    assert combined == singles


def test_batch_errors_are_isolated_per_item():
    from ctray.serving.batching import run_isolated

    def square(items):
        if any(i < 0 for i in items):
            raise ValueError("negative input")
        return [i * i for i in items]

    out = run_isolated(square, [1, -2, 3])
    assert [o.value for o in out] == [1, None, 9]
    assert out[1].error.code == "model_error" and "negative" in out[1].error.message
    assert [o.batch_size for o in out] == [1, 1, 1]
    whole = run_isolated(square, [2, 3])
    assert [(o.value, o.batch_size) for o in whole] == [(4, 2), (9, 2)]


# ------------------------------------------------------------------ served apps

def test_rules_app_labels_known_sentences(server):
    texts = [*EN_CASES, *JA_CASES, "   "]
    r = server["http"].post("/rules/label", json={"texts": texts, "include_evidence": True,
                                                  "ids": [f"r{i}" for i in range(len(texts))]})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    expected = [*EN_CASES.values(), *JA_CASES.values()]
    for item, want in zip(results, expected):
        assert item["error"] is None and _labels(item) == want, item
    assert results[3]["lang"] == "ja" and results[0]["lang"] == "en"
    assert "Bilateral pleural effusion" in results[0]["evidence"]["pleural_effusion"]
    assert results[-1]["error"]["code"] == "empty_text" and results[-1]["labels"] is None
    assert [i["id"] for i in results] == [f"r{i}" for i in range(len(texts))]


def test_findings_app_equals_classifier_predict(server, checkpoints):
    from ctray.tasks.findings.model import FindingsClassifier

    clf = FindingsClassifier.from_pretrained(checkpoints[0], device="cpu")
    labels, probs = clf.predict(TEXTS)
    assert clf.last_n_chunked >= 5  # the reports really span several windows
    r = server["http"].post("/findings/label", json={"texts": TEXTS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["checkpoint"] == checkpoints[0]
    for i, item in enumerate(body["results"]):
        assert [item["labels"][c] for c in clf.columns] == labels[i].tolist()
        got = np.array([item["probabilities"][c] for c in clf.columns])
        np.testing.assert_allclose(got, probs[i], atol=1e-5)
        assert item["positive"] == [n for n, v in zip(clf.label_names, labels[i]) if v]


def test_findings_batches_concurrent_requests(server, checkpoints):
    from ctray.tasks.findings.model import FindingsClassifier

    expected = FindingsClassifier.from_pretrained(checkpoints[0], device="cpu").predict_proba(TEXTS)
    before = server["http"].get("/findings/stats").json()

    def one(i: int):
        text_index = i % len(TEXTS)
        r = httpx.post(f"{server['base']}/findings/label",
                       json={"texts": [TEXTS[text_index]]}, timeout=60)
        return text_index, r.json()["results"][0]

    with cf.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(32)))
    sizes = [item["batch_size"] for _, item in results]
    assert 1 < max(sizes) <= 8, sizes  # 8: user_config.max_batch_size, not the default 16
    for text_index, item in results:  # batching never mixes up whose result is whose
        got = np.array(list(item["probabilities"].values()))
        np.testing.assert_allclose(got, expected[text_index], atol=1e-5)
    after = server["http"].get("/findings/stats").json()
    assert after["items"] - before["items"] == 32
    assert any(int(size) > 1 for size in after["batch_sizes"])


def test_http_errors_422_413(server):
    http = server["http"]
    missing = http.post("/findings/label", json={"text": ["typo in the field name"]})
    assert missing.status_code == 422
    fields = [tuple(e["loc"]) for e in missing.json()["detail"]]
    assert ("body", "texts") in fields
    wrong_type = http.post("/rules/label", json={"texts": "not a list"})
    assert wrong_type.status_code == 422
    assert wrong_type.json()["detail"][0]["loc"] == ["body", "texts"]
    ids = http.post("/rules/label", json={"texts": ["a", "b"], "ids": ["only-one"]})
    assert ids.status_code == 422 and "ids" in ids.text
    too_long = http.post("/findings/label", json={"texts": ["ok", "x" * 5001]})
    assert too_long.status_code == 413 and "texts[1]" in too_long.json()["detail"]
    too_many = http.post("/rules/label", json={"texts": ["ok"] * 11})
    assert too_many.status_code == 413 and "limit is 10" in too_many.json()["detail"]
    section = http.post("/translate/report", json={"sections": {"findings": "x" * 8001}})
    assert section.status_code == 413 and "sections['findings']" in section.json()["detail"]


def test_translate_app_per_item_errors(server):
    sections = {"findings": "No pleural effusion.", "impressions": "Normal study.",
                "technique": f"{UNPARSEABLE} section", "clinical_information": ""}
    r = server["http"].post("/translate/report", json={"id": "rep-1", "sections": sections})
    assert r.status_code == 200, r.text
    out = r.json()["sections"]
    assert out["findings"]["translation"] == fake_translation("No pleural effusion.")
    assert out["impressions"]["translation"] == fake_translation("Normal study.")
    assert out["technique"]["error"]["code"] == "parse_error"
    assert out["technique"]["translation"] is None
    assert out["clinical_information"]["error"]["code"] == "empty_text"
    assert max(s["batch_size"] or 0 for s in out.values()) > 1  # sections batched together
    assert r.json()["prompt_version"].startswith("translate-en-ja@")


def test_llm_findings_app_through_openai_compatible_server(server, llm_server):
    from ctray.tasks.findings.rules import RuleLabeler

    texts = [*EN_CASES, *JA_CASES, f"{UNPARSEABLE}: cardiomegaly."]
    seen = len(llm_server.requests)
    r = server["http"].post("/llm-findings/label", json={"texts": texts})
    assert r.status_code == 200, r.text
    body = r.json()
    for text, item in zip(texts[:-1], body["results"]):
        assert item["error"] is None, item
        assert item["labels"] == RuleLabeler("auto").label(text).labels
        assert item["prompt_tokens"] > 0 and item["completion_tokens"] > 0
    bad = body["results"][-1]
    assert bad["error"]["code"] == "parse_error" and bad["labels"] is None
    requests = llm_server.requests[seen:]
    assert len(requests) == len(texts) + 1  # one repair request for the unusable answer
    assert all(q["response_format"]["type"] == "json_schema" for q in requests)
    assert max(i["batch_size"] for i in body["results"]) > 1
    assert body["prompt_version"] and body["model"] == "openai:stub-model"


def test_overload_gives_503_and_slow_requests_408(server):
    import threading

    start = threading.Barrier(8)

    def fire(_):
        start.wait()  # all eight arrive while the first (2 s) is still running
        return httpx.post(f"{server['base']}/slow/report",
                          json={"sections": {"findings": "Small nodule."}}, timeout=60).status_code

    with cf.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(fire, range(8)))
    # One running and one queued; the rest are refused at once (no pile-up). One slot of
    # slack for a thread the loaded test machine starts late.
    assert 1 <= codes.count(200) <= 3 and codes.count(503) >= 5, codes
    assert set(codes) <= {200, 503}
    timed_out = server["http"].post("/slow/report", json={"sections": {"findings": "Nodule."}},
                                    headers={"x-request-timeout-seconds": "0.3"})
    assert timed_out.status_code == 408


def test_bearer_token_auth(server):
    from ctray.serving.client import LabelingClient, LabelingError

    url = "/secure/label"
    body = {"texts": ["Cardiomegaly."]}
    assert server["http"].post(url, json=body).status_code == 401
    wrong = server["http"].post(url, json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert server["http"].get("/secure/healthz").status_code == 200  # probes need no token
    assert server["http"].get("/secure/version").status_code == 401
    with LabelingClient(server["base"], token=TOKEN, prefixes={"rules": "/secure"}) as client:
        assert client.rules(["Cardiomegaly."]).results[0].positive == ["Cardiomegaly"]
    with LabelingClient(server["base"], prefixes={"rules": "/secure"}) as client:
        with pytest.raises(LabelingError) as err:
            client.rules(["Cardiomegaly."])
        assert err.value.status_code == 401
    # Auth off (no token in that replica's environment): the same call works without one.
    assert server["http"].post("/rules/label", json=body).status_code == 200


def test_client_health_and_version(server, checkpoints):
    from ctray.serving.client import LabelingClient

    with LabelingClient(server["base"]) as client:
        for app in ("findings", "rules", "translate", "llm_findings"):
            assert client.health(app).status == "ok"
        version = client.version("findings")
        assert version.checkpoint == checkpoints[0] and version.model == "random-bert-32x1"
        assert version.max_batch_size == 8 and version.replica.startswith("SERVE_REPLICA::findings")
        result = client.findings(["食道裂孔ヘルニアを認める。", ""], ids=["a", "b"])
        assert result.results[0].labels is not None and result.results[1].error.code == "empty_text"
        translated = client.translate({"findings": "Atelectasis."}).sections["findings"]
        assert translated.translation == fake_translation("Atelectasis.")


def test_report_text_never_logged(server):
    import ray

    text = f"{SECRET_MARKER} reports a pleural effusion."
    for path, body in (("/findings/label", {"texts": [text]}), ("/rules/label", {"texts": [text]}),
                       ("/translate/report", {"sections": {"findings": text}}),
                       ("/llm-findings/label", {"texts": [text, f"{UNPARSEABLE} {text}"]}),
                       ("/findings/label", {"texts": [text * 400]})):  # 413 path too
        server["http"].post(path, json=body)
    assert not ray_log_files_containing(SECRET_MARKER)
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    serve_logs = "".join(p.read_text(errors="ignore") for p in (logs / "serve").glob("*.log"))
    assert "items=1 chars=" in serve_logs  # what is logged instead: counts and lengths


def test_reconfigure_swaps_checkpoint_without_restart(server, checkpoints):
    from ctray.tasks.findings.model import FindingsClassifier

    http = server["http"]
    replica = http.get("/findings/version").json()["replica"]
    config = copy.deepcopy(server["config"])
    config["applications"][0]["deployments"][0]["user_config"]["checkpoint"] = checkpoints[1]
    deploy(config)
    deadline = time.time() + 60
    while http.get("/findings/version").json()["checkpoint"] != checkpoints[1]:
        assert time.time() < deadline, "user_config was not applied"
        time.sleep(0.5)
    assert http.get("/findings/version").json()["replica"] == replica  # same actor: no restart
    old = FindingsClassifier.from_pretrained(checkpoints[0], device="cpu").predict_proba(TEXTS)
    new = FindingsClassifier.from_pretrained(checkpoints[1], device="cpu").predict_proba(TEXTS)
    assert np.abs(old - new).max() > 0.05  # the two models are distinguishable
    body = http.post("/findings/label", json={"texts": TEXTS}).json()
    assert body["checkpoint"] == checkpoints[1]
    got = np.array([list(item["probabilities"].values()) for item in body["results"]])
    np.testing.assert_allclose(got, new, atol=1e-5)


def test_replica_failure_recovers(server):
    import ray

    http = server["http"]
    replica = http.get("/rules/version").json()["replica"]
    ray.kill(ray.get_actor(replica, namespace="serve"), no_restart=True)
    deadline, codes = time.time() + 120, []
    while True:
        r = http.post("/rules/label", json={"texts": ["Cardiomegaly."]})
        codes.append(r.status_code)
        if r.status_code == 200:
            break
        assert time.time() < deadline, f"no recovery: {codes[-5:]}"
        time.sleep(0.5)
    assert r.json()["results"][0]["positive"] == ["Cardiomegaly"]
    assert http.get("/rules/version").json()["replica"] != replica


def test_serve_bench_job_against_running_app(server, tmp_path):
    from ctray.cli import run_job

    report = run_job("bench-serve", [
        "--config", str(REPO / "configs" / "bench_serve.yaml"), "--url", server["base"],
        "--output", str(tmp_path), "--limit", "16", "--set", "concurrency=[1,4]",
        "--set", "requests_per_level=12", "--set", "warmup_requests=2",
        "--set", f"corpus.path={REPO / 'ctray' / 'data' / 'sample_reports_ja.csv'}",
        "--set", "corpus.sections={findings: Findings_JA, impressions: Impressions_JA}"])
    assert [r["concurrency"] for r in report["results"]] == [1, 4]
    for r in report["results"]:
        assert r["errors"] == 0 and r["requests"] == 12
        assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] and r["requests_per_s"] > 0
    assert json.loads((tmp_path / "manifest.json").read_text())["results"] == report["results"]
