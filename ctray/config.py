"""Typed job configs: a YAML file plus ``--set key.path=value`` overrides, no eval.

Every job config derives from :class:`JobConfig`; a CLI flag is just an override
of a config field, so anything a flag can do a config file can do too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ctray.errors import UserError
from ctray.io.corpus import CorpusConfig
from ctray.llm.config import BackendConfig

T = TypeVar("T", bound="JobConfig")


class ConfigError(UserError, ValueError):
    pass


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    output: str = "runs/output"
    resume: bool = True
    retry_failed: bool = False
    allow_config_change: bool = False
    # None: start (or join) a local Ray; "auto": the cluster this process runs on.
    ray_address: str | None = None
    num_cpus: int | None = None
    writer_batch_size: int = 256
    # Rows per block entering the stages (None: writer_batch_size): what a kill can lose.
    rows_per_block: int | None = None
    log_level: str = "INFO"


class JobConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    job: str = ""
    run: RunConfig = Field(default_factory=RunConfig)


class CorpusJobConfig(JobConfig):
    corpus: CorpusConfig


class LLMJobConfig(CorpusJobConfig):
    backend: BackendConfig = Field(default_factory=BackendConfig)


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[path[-1]] = value
    return data


def load_config(cls: type[T], path: str | Path | None = None,
                overrides: list[str] | None = None) -> T:
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config file {p} does not exist")
        loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{p}: a config file must be a mapping")
        data = loaded or {}
    data = apply_overrides(data, overrides or [])
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        where = f" in {path}" if path else ""
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid {cls.__name__}{where}: {problems}") from None
