"""``ctray label-findings``: label a corpus with the rule labeler, an LLM or the
fine-tuned classifier, as Ray Data actor pools through the shared job runner (resume,
per-row errors, manifest).

Every labeler writes the 18 finding columns (snake_case, CT-RATE order). The rule
labeler adds ``evidence_<finding>`` (the sentence that made it positive), the
classifier ``prob_<finding>`` and ``n_windows`` (>1: the report was longer than the
model's window and was scored in overlapping windows).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ctray.config import LLMJobConfig, sample_path
from ctray.errors import UserError
from ctray.io.corpus import CorpusConfig
from ctray.pipeline.stage import Resources, Stage
from ctray.tasks.findings.stages import ModelLabelStage, RuleLabelStage, WINDOWS_COL

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- job

class LLMLabelerOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    guided_json: bool = Field(True, description="send the JSON schema (enforced by vllm / openai)")
    repair: bool = Field(True, description="one follow-up request after an unusable answer")
    lenient: bool = Field(False, description="accept the object inside a code block or prose")
    max_tokens: int = Field(400, description="answer length limit")


class ModelOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    path: str | None = Field(None, description="exported model dir (ctray train-findings), local "
                             "or s3://")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: cuda when this actor has a GPU")
    num_gpus: float | Literal["auto"] = Field(
        "auto", description="per actor; auto: 1 when the cluster has GPUs")
    num_cpus: float = Field(1.0, description="CPUs per actor")
    batch_size: int = Field(32, description="reports per Ray Data batch")
    concurrency: int | tuple[int, int] = Field(
        1, description="actors: n, or (min, max) to autoscale")
    chunk_batch_size: int = Field(16, description="windows per forward pass")
    dtype: str | None = Field(None, description="e.g. bfloat16 on GPU")


class RuleOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_cpus: float = Field(0.5, description="CPUs per actor")
    batch_size: int = Field(64, description="reports per Ray Data batch")
    concurrency: int | tuple[int, int] = Field(
        1, description="actors: n, or (min, max) to autoscale")


class LabelFindingsConfig(LLMJobConfig):
    job: str = "label-findings"
    corpus: CorpusConfig = Field(
        default_factory=lambda: CorpusConfig(path=sample_path("sample_reports_en.csv")),
        description="the reports to read (path, columns, limit)")
    labeler: Literal["rules", "llm", "model"] = Field(
        "rules", description="rules (regex + negation), llm (JSON answers) or model (the "
        "classifier train-findings exported)")
    lang: Literal["auto", "en", "ja"] = Field(
        "auto", description="report language; auto: detected per report")
    llm: LLMLabelerOptions = Field(
        default_factory=LLMLabelerOptions, description="options of the LLM labeler")
    model: ModelOptions = Field(
        default_factory=ModelOptions, description="options of the classifier")
    rules: RuleOptions = Field(
        default_factory=RuleOptions, description="options of the rule labeler")

    @field_validator("corpus", mode="before")
    @classmethod
    def _corpus_defaults(cls, value):
        # `--limit 10` alone must not drop the default corpus path and sections.
        if isinstance(value, dict) and "path" not in value:
            return {**{"path": sample_path("sample_reports_en.csv")}, **value}
        return value


def _gpus_available() -> bool:
    import ray

    return ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0


def build_stage(cfg: LabelFindingsConfig) -> Stage:
    if cfg.labeler == "rules":
        r = cfg.rules
        return RuleLabelStage(cfg.lang, resources=Resources(num_cpus=r.num_cpus,
                                                            batch_size=r.batch_size,
                                                            concurrency=r.concurrency))
    if cfg.labeler == "llm":
        from ctray.llm.task import LLMStage
        from ctray.tasks.findings.llm_tasks import FindingsLLMTask

        o = cfg.llm
        task = FindingsLLMTask(cfg.lang, max_tokens=o.max_tokens,
                               temperature=cfg.backend.temperature, guided_json=o.guided_json,
                               repair=o.repair, lenient=o.lenient)
        return LLMStage(task, cfg.backend)
    m = cfg.model
    if not m.path:
        raise UserError("--labeler model needs model.path (--model-dir): a directory "
                        "exported by ctray train-findings")
    gpus = (1.0 if _gpus_available() else 0.0) if m.num_gpus == "auto" else float(m.num_gpus)
    device = None if m.device == "auto" else m.device
    if gpus and device is None:
        device = "cuda"
    return ModelLabelStage(m.path, device=device, chunk_batch_size=m.chunk_batch_size,
                           dtype=m.dtype,
                           resources=Resources(num_cpus=m.num_cpus, num_gpus=gpus,
                                               batch_size=m.batch_size, concurrency=m.concurrency))


def _fingerprint(cfg: LabelFindingsConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"labeler": cfg.labeler, "lang": cfg.lang}
    if cfg.labeler == "llm":
        out["llm"] = cfg.llm.model_dump()
    if cfg.labeler == "model":
        out["model"] = cfg.model.path
        meta = _model_meta(cfg.model.path)
        if meta:
            out["model_meta"] = {k: meta.get(k) for k in ("thresholds", "max_length", "stride",
                                                          "source_checkpoint")}
    return out


def _model_meta(path: str | None) -> dict | None:
    from pathlib import Path

    from ctray.tasks.findings.model import META_FILE

    if path and "://" not in path and (Path(path) / META_FILE).exists():
        import json

        return json.loads((Path(path) / META_FILE).read_text(encoding="utf-8"))
    return None


def chunked_reports(output: str) -> int:
    """Reports of a model labeling run scored in several windows (reads one column)."""
    import pyarrow.parquet as pq

    from ctray.io.output import OutputLayout, resolve_fs

    total = 0
    for uri in OutputLayout(output).parquet_files("results"):
        filesystem, path = resolve_fs(uri)
        with filesystem.open_input_file(path) as f:
            pf = pq.ParquetFile(f)
            if WINDOWS_COL in pf.schema_arrow.names:
                total += int(np.sum(pf.read(columns=[WINDOWS_COL]).column(0).to_numpy() > 1))
    return total


def run_label_findings(cfg: LabelFindingsConfig):
    from ctray.pipeline.job import run_corpus_job

    def count_chunked(output: str, manifest: dict[str, Any]) -> dict[str, Any]:
        if cfg.labeler != "model":
            return {}
        chunked = chunked_reports(output)
        print(f"[ctray label-findings] {chunked} report(s) were longer than "
              "the model window and were scored in overlapping windows")
        return {"chunked_reports": chunked}

    return run_corpus_job(cfg, [build_stage(cfg)], fingerprint=_fingerprint(cfg),
                          extra_manifest={"labeler": cfg.labeler}, after_run=count_chunked)
