"""Every LLM pipeline end to end through the real vLLM engine (the CPU build in CI).

The model is the offline Gemma 3 270M (the packaged GGUF, converted once into
ctray's model cache). These tests assert what the engine guarantees and the
pipelines promise: every answer parses, guided answers are listed options or
schema-valid JSON, every pass of a multi-pass job ran, and the manifest names the
engine. They do not judge label quality (a 270M model is far too small for that).

Engine starts are the cost (tens of seconds each on 2 cores), so the module starts
one shared engine actor that the translate and findings jobs and the LEAVS Serve app
use (``engine_mode: shared``); the demo runs through the ``ray.data.llm`` processor
and the Serve test through an engine inside the replica, one start each.
Skipped where vLLM is not installed (``pip install -e ".[cpu]"``).
"""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path

import pandas as pd
import pytest

from ctray.config import load_config

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(find_spec("vllm") is None, reason='vLLM not installed (pip install -e ".[cpu]")'),
]

REPO = Path(__file__).resolve().parents[1]
SAMPLE_EN = str(REPO / "ctray" / "data" / "sample_reports_en.csv")
# One engine for the module: identical engine settings -> the same named engine actor.
ENGINE = ["backend.kind=vllm", "backend.max_model_len=4096", "backend.kv_cache_gib=1",
          "backend.device=cpu"]
SHARED = ENGINE + ["backend.engine_mode=shared"]


def engine_config(**extra):
    """The backend section the overrides above give every job (same engine settings)."""
    from ctray.llm.config import DEFAULT_MODEL, backend_config

    return backend_config(kind="vllm", model=DEFAULT_MODEL, max_model_len=4096, kv_cache_gib=1,
                         device="cpu", **extra)


def results(path: str | Path) -> pd.DataFrame:
    files = sorted(Path(path, "results").glob("*.parquet"))
    assert files, f"no results under {path}"
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def errors(path: str | Path) -> pd.DataFrame:
    files = sorted(Path(path, "errors").glob("*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else pd.DataFrame()


def engine_of(manifest: dict) -> dict:
    models = manifest.get("models") or []
    assert models, "manifest records no model"
    return models[0]


def assert_vllm_cpu(manifest: dict, via: str) -> None:
    engine = engine_of(manifest)
    assert engine["kind"] == "vllm" and engine["engine"] == "vllm", engine
    assert engine["device"] == "cpu" and engine["via"] == via, engine
    assert engine["engine_version"], engine


@pytest.fixture(scope="module")
def shared_engine(ray_local):
    """Start the module's engine once (on this driver, so it outlives every job)."""
    from ctray.llm.vllm_shared import shared_engine as start
    from ctray.llm.vllm_shared import stop_shared_engines

    cfg = engine_config(engine_mode="shared")
    start(cfg, create=True)
    yield cfg
    stop_shared_engines()


# ------------------------------------------------------------------ demo (ray.data.llm)

def test_demo_cli_runs_through_ray_data_llm_and_exits_without_a_traceback(tmp_path):
    """The README's first command, as a user runs it (its own Ray, the CLI's exit path):
    guided yes/no answers, the CPU's dtype in the manifest, and a clean stderr."""
    import os
    import subprocess
    import sys

    from ctray.hardware import cpu_dtype

    out = tmp_path / "demo"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "ctray.cli", "demo", "--config", str(REPO / "configs" / "demo.yaml"),
         "--limit", "8", "--set", f"run.output={out}", "--set", "run.num_cpus=2",
         *[f"--set={o}" for o in ENGINE]],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=840)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout, done.stderr[-6000:]
    assert "engine dtype " + cpu_dtype().dtype in done.stdout
    frame = results(out)
    assert len(frame) == 8 and set(frame["answer"]) <= {"yes", "no"}
    assert (frame["prompt_tokens"] > 0).all() and (frame["completion_tokens"] > 0).all()
    manifest = json.loads((out / "manifest.json").read_text())
    assert_vllm_cpu(manifest, "ray.data.llm")
    assert engine_of(manifest)["dtype"] == cpu_dtype().dtype
    assert manifest["machine"]["native_bf16"] == (cpu_dtype().dtype == "bfloat16")
    assert manifest["versions"]["vllm-cpu"] or manifest["versions"]["vllm"]


# ------------------------------------------------------------------ shared engine jobs

@pytest.mark.extended  # CI: the findings job and Serve app on the same engine, translate on the fake backend
def test_translate_a_few_sections(shared_engine, tmp_path):
    from ctray.tasks.translate.translate_job import TranslateConfig, run_translate

    cfg = load_config(TranslateConfig, REPO / "configs" / "translate.yaml", [
        f"corpus.path={SAMPLE_EN}", "corpus.limit=2", f"run.output={tmp_path / 'tr'}",
        "sections=[findings]", "back_translate=false", "backend.max_tokens=96", *SHARED])
    summary = run_translate(cfg)["translate"]
    assert summary.ok >= 1 and summary.ok + summary.failed == 2
    out = results(summary.output)
    assert out["translation"].str.len().gt(0).all()
    assert_vllm_cpu(summary.manifest, "shared engine actor")


def test_llm_findings_labeling_guided_json_every_row_parses(shared_engine, tmp_path):
    import jsonschema

    from ctray.tasks.findings.label_job import LabelFindingsConfig, run_label_findings
    from ctray.tasks.findings.llm_tasks import label_schema
    from ctray.tasks.findings.schema import FINDING_COLUMNS

    cfg = load_config(LabelFindingsConfig, REPO / "configs" / "label_findings.yaml", [
        "labeler=llm", "corpus.limit=4", f"run.output={tmp_path / 'lf'}", *SHARED])
    summary = run_label_findings(cfg)
    assert (summary.ok, summary.failed) == (4, 0)
    out = results(summary.output)
    schema = label_schema()
    for raw in out["llm_raw"]:
        jsonschema.validate(json.loads(raw), schema)  # guided decoding: valid on the first try
    assert (out["llm_calls"] == 1).all()
    assert set(pd.unique(out[list(FINDING_COLUMNS)].to_numpy().ravel())) <= {0, 1}
    assert_vllm_cpu(summary.manifest, "shared engine actor")


@pytest.mark.extended
def test_leavs_a_few_reports_every_stage(shared_engine, tmp_path):
    from ctray.tasks.leavs import assemble as A
    from ctray.tasks.leavs.leavs_job import LeavsConfig, run_leavs

    cfg = load_config(LeavsConfig, REPO / "configs" / "label_leavs.yaml", [
        "corpus.limit=2", "organs=[liver, spleen]", f"run.output={tmp_path / 'leavs'}",
        "cot_max_tokens=48", "backend.max_tokens=96", "shuffle_partitions=2",
        "shuffle_strategy=sort_shuffle_pull_based", *SHARED])
    run = run_leavs(cfg)
    # Every stage ran as its own pass; whether the sentence check and urgency get rows
    # depends on the model's earlier answers (every sentence listed, no finding present).
    assert all(run.passes[name] is not None for name in A.STAGES), run.passes
    for name in ("filter_list", "finding_types", "certainty"):
        assert run.passes[name].ok > 0, name
    for name in A.STAGES:
        summary = run.passes[name]
        # Guided decoding (choice / regex): the answers of every stage parse.
        assert summary.failed == 0, (name, errors(summary.output).head(3).to_dict("records"))
        if summary.ok:
            assert_vllm_cpu(summary.manifest, "shared engine actor")
    labels = run.manifest["labels"]
    assert (labels["organs_labelled"], labels["organs_incomplete"]) == (4, 0)
    release = pd.read_csv(run.csv)
    assert set(release["subjectid_studyid"].astype(str)) == set(
        results(run.passes["filter_list"].output)["report_id"].astype(str))


def _answered_through_vllm(summary, rows: int) -> None:
    """Every input row came back from the engine: parsed, or a row error that keeps
    the model's raw answer (a 270M base model rarely passes ground-text's checks)."""
    assert summary is not None and summary.ok + summary.failed == rows, summary
    assert_vllm_cpu(summary.manifest, "shared engine actor")
    if summary.failed:
        failed = errors(summary.output)
        assert failed["llm_raw"].fillna("").str.len().gt(0).all()
        assert failed["input_json"].str.len().gt(0).all()


@pytest.mark.extended
def test_ground_text_rewrite_findings_categories(shared_engine, tmp_path):
    """Pass 1 on vLLM from the corpus; passes 2 and 3 on vLLM from a reference rewrite
    (the deterministic fake's, resumed into with a changed backend), so they run
    whatever the 270M model makes of pass 1."""
    import shutil

    from ctray.tasks.grounding.text_job import GroundTextConfig, run_ground_text

    engine = [f"corpus.path={SAMPLE_EN}", "corpus.limit=2", "backend.max_tokens=768", *SHARED]
    out = run_ground_text(load_config(GroundTextConfig, REPO / "configs" / "ground_text.yaml",
                                      [f"run.output={tmp_path / 'gt'}", *engine]))
    _answered_through_vllm(out["rewrite"], 2)

    seeded = tmp_path / "seeded"
    fake = run_ground_text(load_config(
        GroundTextConfig, REPO / "tests" / "configs" / "ground_text_fake.yaml",
        ["corpus.limit=2", f"run.output={seeded}", "write_final=false"]))
    assert fake["rewrite"].ok == 2
    for later in ("findings", "categories"):
        shutil.rmtree(seeded / later)
    out = run_ground_text(load_config(GroundTextConfig, REPO / "configs" / "ground_text.yaml",
                                      [f"run.output={seeded}", "run.allow_config_change=true",
                                       *engine]))
    assert out["rewrite"].ok + out["rewrite"].failed == 0  # the reference rows are kept
    _answered_through_vllm(out["findings"], 2)
    found = results(seeded / "findings") if out["findings"].ok else pd.DataFrame()
    if len(found) and (found["n_abnormal"] > 0).any():
        _answered_through_vllm(out["categories"], int((found["n_abnormal"] > 0).sum()))


# ------------------------------------------------------------------ Serve

def _llm_findings_serve_app_answers(backend):
    import httpx
    from ray import serve

    from ctray.tasks.findings.serve import LLMFindingsAppArgs, llm_findings_app
    from ctray.tasks.findings.schema import FINDING_COLUMNS
    from serve_fixtures import free_port

    args = LLMFindingsAppArgs(backend=backend, max_batch_size=4, batch_wait_timeout_s=0.2)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 300})
    try:
        serve.run(llm_findings_app(args, ray_actor_options={"num_cpus": 0}),
                  name="llm-findings-vllm", route_prefix="/llm-findings")
        texts = ["Mild cardiomegaly. Small right pleural effusion.",
                 "No acute abnormality. Lungs are clear."]
        r = httpx.post(f"http://127.0.0.1:{port}/llm-findings/label", json={"texts": texts},
                       timeout=300)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"].startswith("vllm:")
        for item in body["results"]:
            assert item["error"] is None, item
            assert set(item["labels"]) == set(FINDING_COLUMNS)
            assert set(item["labels"].values()) <= {0, 1}
            assert item["prompt_tokens"] > 0 and item["completion_tokens"] > 0
    finally:
        serve.delete("llm-findings-vllm")
        serve.shutdown()


def test_llm_findings_serve_app_answers_through_vllm_on_the_shared_engine(shared_engine):
    """The app's replica sends its batches to the module's engine actor (engine_mode:
    shared), so the Serve path costs no further engine start in CI."""
    _llm_findings_serve_app_answers(shared_engine)


@pytest.mark.extended
def test_llm_findings_serve_app_answers_through_vllm_in_the_replica(ray_local):
    """The engine inside the replica (the default of serve/llm_findings.yaml)."""
    _llm_findings_serve_app_answers(engine_config())


@pytest.mark.extended
def test_leavs_serve_app_labels_one_report_on_the_shared_engine(shared_engine):
    """The LEAVS app runs every stage in the replica; here its backend is the module's
    engine (engine_mode: shared), so the test costs no further engine start."""
    import httpx
    from ray import serve

    from ctray.tasks.leavs.serve import LeavsAppArgs, leavs_app
    from ctray.tasks.leavs import schema
    from serve_fixtures import free_port

    backend = {**shared_engine.model_dump(), "max_tokens": 96}
    args = LeavsAppArgs(config={"organs": ["liver", "spleen"], "fast": True,
                                "cot_max_tokens": 48, "backend": backend})
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 600})
    try:
        serve.run(leavs_app(args, ray_actor_options={"num_cpus": 0}), name="leavs-vllm",
                  route_prefix="/leavs")
        text = "The liver is enlarged with a 2 cm hypodense lesion. The spleen is normal."
        r = httpx.post(f"http://127.0.0.1:{port}/leavs/report", json={"text": text, "id": "r1"},
                       timeout=600)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"].startswith("vllm:") and body["id"] == "r1"
        assert {o["organ"] for o in body["organs"]} == {"liver", "spleen"}
        for organ in body["organs"]:
            assert set(organ["labels"]) == set(schema.FINDING_TYPES)
            assert set(organ["urgency"]) == set(schema.FINDING_TYPES)
    finally:
        serve.delete("leavs-vllm")
        serve.shutdown()


# ------------------------------------------------------------------ guided-decoding schemas

def test_every_guided_json_schema_is_one_vllm_can_enforce():
    """vLLM rejects a request whose schema uses keywords its grammar backends lack
    (``uniqueItems`` failed every fine-tuned CXR request once); checked with vLLM's own
    test, on every schema ctray sends."""
    from vllm.v1.structured_output.backend_xgrammar import has_xgrammar_unsupported_json_features

    from ctray.tasks.cxr import sft_format as cxr_sft
    from ctray.tasks.cxr.llm_tasks import label_schema as cxr_schema
    from ctray.tasks.findings import sft_format as ct_sft
    from ctray.tasks.findings.llm_tasks import label_schema as findings_schema
    from ctray.tasks.grounding.categories import load_categories
    from ctray.tasks.grounding.text_checks import (FINDINGS_SCHEMA, REWRITE_SCHEMA,
                                                   categories_schema)

    schemas = {"cxr sft": cxr_sft.json_schema(), "cxr json-4class": cxr_schema(),
               "ct-rate sft": ct_sft.json_schema(), "findings": findings_schema(),
               "ground rewrite": REWRITE_SCHEMA, "ground findings": FINDINGS_SCHEMA,
               "ground categories": categories_schema(
                   ["f1", "f2"], load_categories().assignable_codes())}
    for name, schema in schemas.items():
        assert not has_xgrammar_unsupported_json_features(schema), name
