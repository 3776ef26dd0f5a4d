"""Helpers for the Serve tests: tiny findings checkpoints, fake LLM responders, ports.

Imported by Serve replicas too (the fake responders), through the ``tests`` folder
on PYTHONPATH that the ``ray_local`` fixture sets.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from ctray.llm.base import LLMRequest
from ctray.local_cluster import free_port  # noqa: F401 - the tests' free port

UNPARSEABLE = "UNPARSEABLE"




def build_findings_checkpoint(out_dir: str | Path, seed: int = 0, hidden: int = 32,
                              layers: int = 1, heads: int = 2, max_length: int = 64,
                              stride: int = 16, lang: str = "ja") -> str:
    """A random tiny BERT exported like ``ctray train-findings`` exports a model.

    ``lang="ja"``: the CT-BERT-JPN setup (tohoku-style MeCab + WordPiece tokenizer).
    ``max_length`` is small so that ordinary reports need several windows and the
    served path exercises the classifier's window pooling."""
    from tiny_bert import build_en_tokenizer, build_ja_tokenizer, build_tiny_bert

    from ctray.tasks.findings.model import META_FILE, FindingsModelMeta

    out = Path(out_dir)
    build_tokenizer = build_ja_tokenizer if lang == "ja" else build_en_tokenizer
    tokenizer = build_tokenizer(out / "_tokenizer")
    build_tiny_bert(out, tokenizer, hidden=hidden, layers=layers, heads=heads, seed=seed,
                    dropout=0.0)
    _spread_outputs(out, seed)
    meta = FindingsModelMeta(max_length=max_length, stride=stride,
                             base_model=f"random-bert-{hidden}x{layers}")
    (out / META_FILE).write_text(json.dumps(meta.to_dict()), encoding="utf-8")
    return str(out)


STD = 0.3


def reseeded_checkpoint(source: str | Path, out_dir: str | Path, seed: int) -> str:
    """A copy of ``source`` (same tokenizer and settings) with other random weights."""
    import shutil

    shutil.copytree(source, out_dir)
    _spread_outputs(Path(out_dir), seed)
    return str(out_dir)


def _spread_outputs(path: Path, seed: int) -> None:
    """Scale the pooler and classifier weights up: at BERT's init scale every report
    gets the same probabilities to 5 decimals, so a served result could not be told
    from another report's. Scaled, each report gets its own, clearly different ones."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(path)
    generator = torch.Generator().manual_seed(1234 + seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("weight") and param.dim() == 2:
                param.normal_(0.0, STD, generator=generator)
    model.save_pretrained(path)


def _source(request: LLMRequest) -> str:
    # The translation prompt's user turn is the section text itself.
    return next(m["content"] for m in request.messages if m["role"] == "user")


KATAKANA = "アイウエオカキクケコサシスセソタチツテトナニヌネノハヒフヘホマミムメモヤユヨラリルレロワヲン"


def fake_translation(text: str) -> str:
    """Letters to katakana: Japanese enough for the parser's language check, and a
    checkable function of the source."""
    return "".join(KATAKANA[ord(c.lower()) % len(KATAKANA)] if c.isalpha() else c for c in text)


def translate_responder(request: LLMRequest) -> str:
    """A source containing UNPARSEABLE gets an answer without the marker line, also
    on the repair turn, so that item fails to parse."""
    source = _source(request)
    if UNPARSEABLE in source:
        return "I cannot translate this."
    return f"考えています。\n和訳:\n{fake_translation(source)}"


def slow_translate_responder(request: LLMRequest) -> str:
    time.sleep(2.0)
    return translate_responder(request)


def findings_json_responder(request: LLMRequest) -> str:
    """JSON labels derived from keywords of the report in the prompt."""
    prompt = "\n".join(m["content"] for m in request.messages if m["role"] == "user")
    if UNPARSEABLE in prompt:
        return "no idea"
    report = prompt.lower()
    return json.dumps({
        "pleural_effusion": int(bool(re.search(r"(?<!no )pleural effusion", report))),
        "cardiomegaly": int("cardiomegaly" in report),
    })


# ----------------------------------------------------------------- deploying in tests

REPO = Path(__file__).resolve().parents[1]


def serve_apps(name: str) -> list[dict]:
    """The applications of a shipped ``serve/<name>.yaml``."""
    import yaml

    config = yaml.safe_load((REPO / "serve" / f"{name}.yaml").read_text(encoding="utf-8"))
    return config["applications"]


def fit_for_tests(app: dict, health_check_period_s: float | None = None, **env: str) -> dict:
    """A shipped app on the test Ray: one zero-CPU, zero-GPU replica per deployment (several
    apps share two CPUs), tests/ importable by the replicas, extra env vars added."""
    import copy

    app = copy.deepcopy(app)
    app["runtime_env"] = {"env_vars": {"PYTHONPATH": f"{REPO / 'tests'}:{REPO}", **env}}
    for dep in app["deployments"]:
        dep.pop("autoscaling_config", None)
        dep["num_replicas"] = 1
        dep["ray_actor_options"] = {**dep.get("ray_actor_options", {}), "num_cpus": 0,
                                    "num_gpus": 0}
        if health_check_period_s is not None:
            dep["health_check_period_s"] = health_check_period_s
    return app


def deploy(config: dict, timeout: float = 240) -> None:
    """What ``serve deploy`` / ``serve run config.yaml`` do: apply a declarative config and
    wait until every app is RUNNING (a DEPLOY_FAILED app fails at once)."""
    from ray import serve
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    serve_start().deploy_apps(ServeDeploySchema.model_validate(config))
    names = {a["name"] for a in config["applications"]}
    deadline = time.time() + timeout
    states: dict = {}
    while time.time() < deadline:
        apps = serve.status().applications
        states = {n: apps[n].status for n in names if n in apps}
        if len(states) == len(names) and set(states.values()) == {"RUNNING"}:
            return
        failed = {n: apps[n].message for n, s in states.items() if s == "DEPLOY_FAILED"}
        if failed:
            raise RuntimeError(f"deploy failed: {failed}")
        time.sleep(0.5)
    raise TimeoutError(f"apps not running after {timeout}s: {states}")


def ray_log_files_containing(marker: str) -> list[str]:
    """Names of the session's log files holding ``marker`` (after the replicas flushed)."""
    import ray

    time.sleep(1.0)  # replicas flush their log files asynchronously
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    return [p.name for p in logs.rglob("*") if p.is_file() and marker.encode() in p.read_bytes()]
