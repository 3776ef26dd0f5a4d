"""The CXR Ray Serve apps (serve/cxr.yaml): labels, evidence, limits, auth, per-item
errors, the LLM app through an OpenAI-compatible server, and no report text in logs.

One Serve instance (127.0.0.1, free port) runs the two apps of ``serve/cxr.yaml``,
patched for a 2-CPU test machine (zero-CPU replicas, one each), plus the rules app with
auth on. The LLM app's backend is a stub OpenAI-compatible server whose "model"
answers the sft format with the rule labeler, so the served path (sft prompt, guided
schema, parsing) is the one of a fine-tuned model behind ``vllm serve``.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import httpx
import pytest
import yaml

from openai_stub_server import StubOpenAIServer
from serve_fixtures import (deploy, fit_for_tests, free_port, ray_log_files_containing,
                            serve_apps)

REPO = Path(__file__).resolve().parents[1]
TOKEN = "cxr-token-51c2"
SECRET_MARKER = "Quetzalcoatlqux"




def sft_model(body: dict) -> str:
    """OpenAI-compatible stub: the fine-tuned model's answer, made by the rule labeler."""
    from ctray.tasks.cxr.rules import CxrRuleLabeler

    prompt = next(m["content"] for m in body["messages"] if m["role"] == "user")
    if "Report:\n" not in prompt:  # the /healthz probe
        return "OK"
    report = prompt.split("Report:\n", 1)[1].strip()
    if "UNPARSEABLE" in report:
        return "no idea"
    from ctray.tasks.cxr.sft_format import answer_text

    return answer_text(CxrRuleLabeler().label(report).labels)




@pytest.fixture(scope="module")
def llm_server():
    with StubOpenAIServer(sft_model) as stub:
        yield stub


@pytest.fixture(scope="module")
def server(ray_local, llm_server):
    from ray import serve

    pytest.importorskip("ctray.tasks.cxr.sft_format")
    rules, llm = (fit_for_tests(a) for a in serve_apps("cxr"))
    rules["deployments"][0]["user_config"].update(max_chars=2000, max_items=5)
    secure = copy.deepcopy(rules)
    secure.update(name="cxr-rules-secure", route_prefix="/cxr-secure")
    secure["deployments"][0]["ray_actor_options"]["runtime_env"] = {
        "env_vars": {"CTRAY_SERVE_TOKEN": TOKEN}}
    llm["args"]["backend"] = {"kind": "openai", "model": "stub-model",
                              "base_url": llm_server.base_url}
    llm["deployments"][0]["user_config"].update(max_batch_size=4, batch_wait_timeout_s=0.1)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 60})
    deploy({"applications": [rules, secure, llm]})
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        yield client
    serve.shutdown()


def test_serve_config_is_valid_and_loopback_only():
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(
        yaml.safe_load((REPO / "serve" / "cxr.yaml").read_text(encoding="utf-8")))
    assert config.http_options.host == "127.0.0.1"
    assert [a.name for a in config.applications] == ["cxr-rules", "cxr-llm"]


def test_rules_app_labels_evidence_and_item_errors(server):
    texts = ["Small right pleural effusion. No pneumothorax.", "  ",
             "No new focal consolidation. Borderline cardiomegaly."]
    r = server.post("/cxr-rules/label", json={"texts": texts, "ids": ["a", "b", "c"],
                                              "include_evidence": True})
    assert r.status_code == 200, r.text
    a, b, c = r.json()["results"]
    assert a["labels"]["Pleural Effusion"] == 1.0 and a["labels"]["Pneumothorax"] == 0.0
    assert a["labels"]["Fracture"] is None
    assert a["positive"] == ["Pleural Effusion"] and a["uncertain"] == []
    assert a["evidence"]["Pneumothorax"] == "No pneumothorax."
    assert b["error"]["code"] == "empty_text" and b["labels"] is None
    assert set(c["uncertain"]) == {"Cardiomegaly", "Consolidation", "Lung Opacity"}
    assert [i["id"] for i in (a, b, c)] == ["a", "b", "c"]
    assert server.get("/cxr-rules/healthz").status_code == 200


def test_rules_app_limits_and_malformed_bodies(server):
    assert server.post("/cxr-rules/label", json={"texts": ["x"] * 6}).status_code == 413
    assert server.post("/cxr-rules/label", json={"texts": ["x" * 2001]}).status_code == 413
    assert server.post("/cxr-rules/label", json={"text": "x"}).status_code == 422
    assert server.post("/cxr-rules/label", json={"texts": ["x"], "ids": []}).status_code == 422


def test_rules_app_bearer_token(server):
    body = {"texts": ["Cardiomegaly."]}
    assert server.post("/cxr-secure/label", json=body).status_code == 401
    bad = server.post("/cxr-secure/label", json=body, headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401
    ok = server.post("/cxr-secure/label", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and ok.json()["results"][0]["labels"]["Cardiomegaly"] == 1.0
    assert server.get("/cxr-secure/healthz").status_code == 200


def test_llm_app_serves_the_fine_tuned_format(server):
    from ctray.tasks.cxr.rules import CxrRuleLabeler

    texts = ["Small right pleural effusion. No pneumothorax.", "UNPARSEABLE text", ""]
    r = server.post("/cxr-llm/label", json={"texts": texts})
    assert r.status_code == 200, r.text
    body = r.json()
    from ctray.tasks.cxr.sft_format import PROMPT_VERSION

    assert body["prompt_version"] == PROMPT_VERSION
    first, second, third = body["results"]
    want = CxrRuleLabeler().label(texts[0]).labels
    assert first["labels"] == {o: (None if math.isnan(v) else v) for o, v in want.items()}
    assert first["completion_tokens"] > 0
    assert second["error"]["code"] == "parse_error" and second["labels"] is None
    assert third["error"]["code"] == "empty_text"
    assert server.get("/cxr-llm/healthz").status_code == 200
    version = server.get("/cxr-llm/version").json()
    assert version["app"] == "cxr-llm" and version["max_batch_size"] == 4


def test_report_text_never_logged(server):
    for route in ("/cxr-rules/label", "/cxr-llm/label"):
        r = server.post(route, json={"texts": [f"{SECRET_MARKER} has a pleural effusion."]})
        assert r.status_code == 200
    leaked = ray_log_files_containing(SECRET_MARKER)
    assert not leaked, leaked
