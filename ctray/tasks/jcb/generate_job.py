"""``generate-jcb``: run a model over J-ClinicalBench settings (zero/one-shot).

Each (setting, shot) is one corpus pass through :class:`LLMStage` (any backend:
vLLM, OpenAI-compatible, hf, fake) with the runner's resume, per-row errors and
manifest under ``<output>/runs/<task>/<model>/<shot>/``. Finished rows are then
written in the release's layout, ``<output>/generated/<group>/<task>/<model>/<shot>.json``
(same fields per task), so ``score-jcb`` reads released and new outputs alike.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
from pydantic import Field, field_validator

from ctray.config import JobConfig, offline_backend
from ctray.llm.config import BackendConfig
from ctray.tasks.jcb.data import load_items
from ctray.tasks.jcb.parsing import PARSERS
from ctray.tasks.jcb.registry import SHOTS, Setting, all_settings, get_setting
from ctray.tasks.jcb.release import JcbInputError, write_records
from ctray.tasks.jcb.llm_tasks import JcbTask

log = logging.getLogger(__name__)
KEYS = ("item_key",)


def _default_backend() -> BackendConfig:
    return offline_backend(max_tokens=256, batch_size=4)


class JcbGenerateConfig(JobConfig):
    #: each setting and shot has its own run folder (named by model_name); limit picks items
    result_neutral_fields: ClassVar[frozenset[str]] = frozenset(
        {"settings", "shots", "limit", "model_name"})
    job: str = "generate-jcb"
    # The release's data/benchmarks folder (CLG/, CLR/, CLU/).
    benchmarks: str = Field(
        "../shared/data/j-clinicalbench/benchmarks", description="the release's data/benchmarks "
        "folder (CLG/, CLR/, CLU/)")
    settings: list[str] = Field(
        default_factory=lambda: list(all_settings()), description="benchmark settings to run "
        "(default: all)")
    shots: list[str] = Field(
        default_factory=lambda: ["one_shot"], description="prompt variants: zero_shot and/or "
        "one_shot")
    # Folder name under generated/<group>/<task>/ (default: from backend.model).
    model_name: str | None = Field(
        None, description="folder name under generated/<group>/<task>/ (default: from "
        "backend.model)")
    # First N items per setting and shot (None: all).
    limit: int | None = Field(None, description="first N items per setting and shot (None: all)")
    # Cap on new tokens (None: each setting's prompt.max_tokens, itself capped by backend).
    max_tokens: int | None = Field(
        None, description="cap on new tokens (None: each setting's prompt.max_tokens)")
    backend: BackendConfig = Field(default_factory=_default_backend,
                                   description="the LLM: vllm (CPU/GPU), openai, hf or fake")

    @field_validator("shots")
    @classmethod
    def _shots(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if s not in SHOTS]
        if bad or not v:
            raise ValueError(f"shots must be among {SHOTS}, got {v}")
        return v

    @field_validator("settings")
    @classmethod
    def _settings(cls, v: list[str]) -> list[str]:
        return [get_setting(name).name for name in v]

    def resolved_model_name(self) -> str:
        name = self.model_name or Path(str(self.backend.model).rstrip("/")).name or "model"
        return re.sub(r"[^A-Za-z0-9._-]+", "-", name)


def _read_results(output: str) -> pd.DataFrame:
    from ctray.io.output import OutputLayout

    files = OutputLayout(output).parquet_files("results")
    if not files:
        return pd.DataFrame(columns=["item_key", "generated"])
    return pd.concat([pd.read_parquet(f, columns=["item_key", "generated"]) for f in files],
                     ignore_index=True)


def _write_generated(cfg: JcbGenerateConfig, setting: Setting, shot: str,
                     items: list[dict[str, Any]], run_output: str) -> tuple[Path, int]:
    done = _read_results(run_output).drop_duplicates("item_key", keep="last")
    answers = dict(zip(done["item_key"], done["generated"]))
    records = []
    for item in items:
        if item["item_key"] not in answers:
            continue  # failed or not run yet: its error is in the run's errors table
        text = answers[item["item_key"]]
        value = (PARSERS[setting.parser](text, **setting.parser_args)
                 if setting.store_parsed else text)
        record = dict(item["record"])
        for out_key, source in setting.record.items():
            if source == "generated":
                record[out_key] = value
        records.append(record)
    path = (Path(cfg.run.output) / "generated" / setting.group / setting.name
            / cfg.resolved_model_name() / f"{shot}.json")
    write_records(path, records, jsonl=setting.group == "CLU")
    return path, len(records)


def run_jcb_generate(cfg: JcbGenerateConfig) -> dict[str, Any]:
    import ray

    from ctray.llm.task import LLMStage
    from ctray.pipeline.chain import write_chain_manifest
    from ctray.pipeline.job import run_corpus_job

    if not Path(cfg.benchmarks).is_dir():
        raise JcbInputError(f"benchmarks {cfg.benchmarks}: no such folder (the release's "
                            "data/benchmarks, holding CLG/, CLR/, CLU/)")
    started = time.time()
    model = cfg.resolved_model_name()
    summary: dict[str, Any] = {"model": model, "passes": {}}
    runs: dict[str, Any] = {}
    for name in cfg.settings:
        setting = get_setting(name)
        for shot in cfg.shots:
            items = load_items(cfg.benchmarks, setting, shot, cfg.limit)
            max_tokens = min(cfg.max_tokens or setting.prompt.max_tokens,
                             cfg.backend.max_tokens or setting.prompt.max_tokens)
            task = JcbTask(setting, shot, max_tokens, cfg.backend.temperature)
            run_output = str(Path(cfg.run.output) / "runs" / setting.name / model / shot)
            ds = ray.data.from_items([{k: it[k] for k in ("item_key", "item_index", "prompt")}
                                      for it in items])
            result = run_corpus_job(
                cfg, [LLMStage(task, cfg.backend)], ds=ds, key_columns=KEYS,
                fingerprint={"setting": setting.name, "version": setting.version, "shot": shot,
                             "prompt": task.prompt_version(), "max_tokens": max_tokens},
                output=run_output,
                extra_manifest={"jcb": {"setting": setting.name, "version": setting.version,
                                        "shot": shot, "items": len(items), "model": model}})
            runs[f"runs/{setting.name}/{model}/{shot}"] = result
            path, written = _write_generated(cfg, setting, shot, items, run_output)
            summary["passes"][f"{setting.name}/{shot}"] = {
                "items": len(items), "written": written, "failed": result.failed,
                "generated": str(path), "run": run_output}
            print(f"[ctray generate-jcb] {setting.name} {shot}: {written}/{len(items)} answers "
                  f"in {path}")
    write_chain_manifest(cfg, started, cfg.run.output, runs, jcb=summary)
    return summary
