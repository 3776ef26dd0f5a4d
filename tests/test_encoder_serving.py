"""The encoder labelers served (serve/encoders.yaml): the CXR encoder app and the findings app
on a train-findings export of the packaged encoder.

One Serve instance (127.0.0.1, free port) runs both apps of ``serve/encoders.yaml``, patched
for a 2-CPU test machine (zero-CPU replicas, one each): the CXR app on a tiny random
CheXbert-style export loaded through a ``file://`` URI (the object-store copy path of
``s3://``), the findings app on an untrained 18-label head over the packaged
all-MiniLM-L6-v2 (what ``train-findings`` exports for English), plus the CXR app with auth on.
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
import json
import math
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from serve_fixtures import (deploy, fit_for_tests, free_port, ray_log_files_containing,
                            serve_apps)

REPO = Path(__file__).resolve().parents[1]
TOKEN = "enc-token-7f1e"
SECRET_MARKER = "Xochiquetzalbrq"
TEXTS = ["Small right pleural effusion. No pneumothorax.",
         "Heart size is enlarged. Mild pulmonary edema. Left lower lobe atelectasis versus "
         "consolidation. Right PICC line tip in the SVC.",
         "No acute cardiopulmonary abnormality."]

encoder_model = pytest.importorskip("ctray.tasks.cxr.encoder_model")


def build_cxr_encoder_checkpoint(out_dir: Path, seed: int = 0) -> str:
    """A random tiny BERT with CheXbert heads, exported like train-cxr-encoder does.
    Windows of 16 tokens: ordinary reports span several, so window pooling is served."""
    import torch
    from transformers import AutoModel

    from tiny_bert import build_en_tokenizer, build_tiny_bert

    tokenizer = build_en_tokenizer(out_dir / "_tokenizer")
    build_tiny_bert(out_dir / "_bert", tokenizer, hidden=32, layers=1, heads=2, seed=seed,
                    dropout=0.0)
    torch.manual_seed(seed)
    encoder = AutoModel.from_pretrained(out_dir / "_bert", add_pooling_layer=False)
    meta = encoder_model.EncoderMeta(max_length=16, stride=4, base_model="random-bert-32x1",
                                     stage="rules")
    net = encoder_model.build_net(encoder, meta)
    with torch.no_grad():  # spread the heads so reports get different, non-blank labels
        for name, param in net.named_parameters():
            if not name.startswith("encoder.") and param.dim() == 2:
                param.normal_(0.0, 2.0)
    encoder_model.save_encoder_labeler(out_dir / "model", net, tokenizer, meta)
    return str(out_dir / "model")


def build_minilm_findings_export(out_dir: Path) -> str:
    """An 18-label head over the packaged encoder, saved as train-findings exports it."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ctray.models import resolve_encoder_source
    from ctray.tasks.findings.model import FindingsModelMeta, save_findings_model
    from ctray.tasks.findings.schema import FINDING_NAMES

    source = resolve_encoder_source("all-minilm-l6-v2")
    model = AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=len(FINDING_NAMES), problem_type="multi_label_classification")
    meta = FindingsModelMeta(max_length=64, stride=16, base_model="all-minilm-l6-v2")
    save_findings_model(out_dir, model, AutoTokenizer.from_pretrained(source), meta)
    return str(out_dir)




@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoder-models")
    return {"cxr": build_cxr_encoder_checkpoint(root / "cxr"),
            "findings": build_minilm_findings_export(root / "findings")}


@pytest.fixture(scope="module")
def server(ray_local, checkpoints):
    from ray import serve

    cxr, findings = (fit_for_tests(a) for a in serve_apps("encoders"))
    cxr["deployments"][0]["user_config"].update(
        checkpoint=f"file://{checkpoints['cxr']}", max_batch_size=8, batch_wait_timeout_s=0.2,
        max_chars=2000, max_items=5, dtype="float32")  # compared exactly with the labeler
    findings["deployments"][0]["user_config"].update(checkpoint=checkpoints["findings"])
    secure = copy.deepcopy(cxr)
    secure.update(name="cxr-encoder-secure", route_prefix="/cxr-encoder-secure")
    secure["deployments"][0]["ray_actor_options"]["runtime_env"] = {
        "env_vars": {"CTRAY_SERVE_TOKEN": TOKEN}}
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 60})
    deploy({"applications": [cxr, findings, secure]})
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        yield client
    serve.shutdown()


def _as_served(labels: dict[str, float]) -> dict[str, float | None]:
    return {o: None if math.isnan(v) else v for o, v in labels.items()}


def test_encoders_config_is_loopback_only():
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(
        yaml.safe_load((REPO / "serve" / "encoders.yaml").read_text(encoding="utf-8")))
    assert config.http_options.host == "127.0.0.1"
    assert [a.name for a in config.applications] == ["cxr-encoder", "findings-encoder"]


def test_cxr_encoder_app_equals_the_labeler_and_batches(server, checkpoints):
    from ctray.tasks.cxr.encoder_model import CXREncoderLabeler

    labeler = CXREncoderLabeler.load(checkpoints["cxr"], device="cpu", dtype="float32")
    expected = [_as_served(d) for d in labeler.label(TEXTS)]
    assert labeler.last_windows.max() > 1  # the served path pools windows too
    assert len({json.dumps(e, sort_keys=True) for e in expected}) == len(TEXTS)

    r = server.post("/cxr-encoder/label", json={"texts": [TEXTS[0], " ", TEXTS[1]],
                                                 "ids": ["a", "b", "c"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "cxr-encoder:random-bert-32x1:rules"
    assert body["checkpoint"] == f"file://{checkpoints['cxr']}"
    a, b, c = body["results"]
    assert a["labels"] == expected[0] and c["labels"] == expected[1]
    assert a["positive"] == [o for o, v in expected[0].items() if v == 1.0]
    assert b["error"]["code"] == "empty_text" and b["labels"] is None
    assert [i["id"] for i in (a, b, c)] == ["a", "b", "c"]

    def one(i: int):
        resp = httpx.post(f"{server.base_url}/cxr-encoder/label",
                          json={"texts": [TEXTS[i % 3]]}, timeout=60)
        return i % 3, resp.json()["results"][0]

    with cf.ThreadPoolExecutor(12) as pool:
        results = list(pool.map(one, range(24)))
    sizes = [item["batch_size"] for _, item in results]
    assert 1 < max(sizes) <= 8, sizes  # user_config.max_batch_size
    for k, item in results:  # batching never mixes up whose result is whose
        assert item["labels"] == expected[k]
    stats = server.get("/cxr-encoder/stats").json()
    assert stats["items"] >= 26 and any(int(s) > 1 for s in stats["batch_sizes"])
    assert server.get("/cxr-encoder/healthz").status_code == 200
    version = server.get("/cxr-encoder/version").json()
    assert version["app"] == "cxr-encoder" and version["max_batch_size"] == 8


def test_cxr_encoder_app_limits_auth_and_malformed_bodies(server):
    assert server.post("/cxr-encoder/label", json={"texts": ["x"] * 6}).status_code == 413
    assert server.post("/cxr-encoder/label", json={"texts": ["x" * 2001]}).status_code == 413
    assert server.post("/cxr-encoder/label", json={"text": "x"}).status_code == 422
    assert server.post("/cxr-encoder/label", json={"texts": ["x"], "ids": []}).status_code == 422
    body = {"texts": ["Cardiomegaly."]}
    assert server.post("/cxr-encoder-secure/label", json=body).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert server.post("/cxr-encoder-secure/label", json=body, headers=wrong).status_code == 401
    ok = server.post("/cxr-encoder-secure/label", json=body,
                     headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and len(ok.json()["results"][0]["labels"]) == 14


def test_serve_bench_measures_the_cxr_encoder_app(server):
    from ctray.tasks.findings.bench_job import measure

    url = f"{server.base_url}/cxr-encoder/label"
    result = measure(url, TEXTS, concurrency=2, n=6, request_fields={})
    assert result.errors == 0 and result.requests_per_s > 0 and result.mean_batch_size >= 1
    # The findings apps' include_probabilities is refused here (422), and counted as errors.
    assert measure(url, TEXTS, concurrency=2, n=4).errors == 4


def test_findings_app_serves_the_packaged_encoder_export(server, checkpoints):
    from ctray.tasks.findings.model import FindingsClassifier

    probs = FindingsClassifier.from_pretrained(checkpoints["findings"], device="cpu") \
        .predict_proba(TEXTS)
    r = server.post("/findings-encoder/label", json={"texts": TEXTS,
                                                      "include_probabilities": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "all-minilm-l6-v2"
    for i, item in enumerate(body["results"]):
        np.testing.assert_allclose(list(item["probabilities"].values()), probs[i], atol=1e-5)
    assert server.get("/findings-encoder/healthz").status_code == 200


def test_report_text_never_logged(server):
    for route in ("/cxr-encoder/label", "/findings-encoder/label"):
        r = server.post(route, json={"texts": [f"{SECRET_MARKER} has a pleural effusion."]})
        assert r.status_code == 200
    leaked = ray_log_files_containing(SECRET_MARKER)
    assert not leaked, leaked


def test_reconfigure_refuses_a_missing_checkpoint(tmp_path):
    import asyncio
    from types import SimpleNamespace

    from ctray.tasks.cxr.serve import CxrEncoderService

    # The replica's reconfigure on a bare instance (the ingress wrapper's __init__ is async).
    reconfigure = CxrEncoderService.func_or_class.reconfigure
    service = SimpleNamespace(config=None, labeler=None)
    with pytest.raises(ValueError, match="needs user_config.checkpoint"):
        asyncio.run(reconfigure(service, {}))
    with pytest.raises(ValueError, match="not a directory on this node"):
        asyncio.run(reconfigure(service, {"checkpoint": str(tmp_path / "missing")}))
    assert service.labeler is None and service.config is None
