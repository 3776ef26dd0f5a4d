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
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ctray.config import LLMJobConfig, sample_path
from ctray.errors import UserError
from ctray.io.corpus import CorpusConfig
from ctray.pipeline.stage import Resources, RowError, Stage, mark_error
from ctray.tasks.findings.schema import FINDING_COLUMNS

log = logging.getLogger(__name__)

PROB_PREFIX = "prob_"
PROB_COLUMNS = tuple(f"{PROB_PREFIX}{c}" for c in FINDING_COLUMNS)
WINDOWS_COL = "n_windows"


def _check_text(row: dict[str, Any], column: str) -> str:
    text = row.get(column)
    if not isinstance(text, str) or not text.strip():
        raise RowError(f"row {row.get('report_id')!r}: field {column!r} is empty")
    return text


class RuleLabelStage(Stage):
    name = "rule_findings"

    def __init__(self, lang: str = "auto", text_column: str = "text",
                 resources: Resources | None = None):
        from ctray.tasks.findings.rules import EVIDENCE_PREFIX

        self.lang = lang
        self.text_column = text_column
        self.input_columns = ("report_id", text_column)
        self.output_columns = FINDING_COLUMNS + tuple(f"{EVIDENCE_PREFIX}{c}" for c in FINDING_COLUMNS)
        self.resources = resources or Resources(num_cpus=0.5, batch_size=64)
        self.labeler = None

    def setup(self) -> None:
        from ctray.tasks.findings.rules import RuleLabeler

        self.labeler = RuleLabeler(self.lang)

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        from ctray.tasks.findings.rules import EVIDENCE_PREFIX

        result = self.labeler.label(_check_text(row, self.text_column))
        return {**result.labels,
                **{f"{EVIDENCE_PREFIX}{c}": result.evidence[c] for c in FINDING_COLUMNS}}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "lang": self.lang}


class ModelLabelStage(Stage):
    """The fine-tuned classifier (``FindingsClassifier``), one model per actor."""

    name = "model_findings"

    def __init__(self, model_path: str, device: str | None = None, text_column: str = "text",
                 resources: Resources | None = None, chunk_batch_size: int = 16,
                 dtype: str | None = None):
        self.model_path = model_path
        self.device = device
        self.text_column = text_column
        self.chunk_batch_size = chunk_batch_size
        self.dtype = dtype
        self.input_columns = ("report_id", text_column)
        self.output_columns = FINDING_COLUMNS + PROB_COLUMNS + (WINDOWS_COL,)
        self.resources = resources or Resources(num_cpus=1, batch_size=32)
        self.classifier = None

    def preflight(self) -> None:
        from pathlib import Path

        from ctray.tasks.findings.model import META_FILE

        if "://" not in self.model_path and Path(self.model_path).is_dir() \
                and not (Path(self.model_path) / "config.json").exists():
            raise UserError(f"{self.model_path} is not a model directory (no config.json); "
                            f"export one with ctray train-findings ({META_FILE} beside the weights)")

    def setup(self) -> None:
        from ctray.tasks.findings.model import FindingsClassifier

        self.classifier = FindingsClassifier.from_pretrained(
            self.model_path, device=self.device, chunk_batch_size=self.chunk_batch_size,
            dtype=self.dtype)

    def process_batch(self, batch: pd.DataFrame) -> pd.DataFrame:
        rows = batch.to_dict("records")
        good, out = [], [None] * len(rows)
        for i, row in enumerate(rows):
            try:
                _check_text(row, self.text_column)
                good.append(i)
            except RowError as exc:
                out[i] = mark_error(row, self.name, exc)
        if good:
            labels, probs = self.classifier.predict([rows[i][self.text_column] for i in good])
            windows = self.classifier.last_windows
            for k, i in enumerate(good):
                out[i] = {**rows[i],
                          **dict(zip(FINDING_COLUMNS, labels[k].tolist())),
                          **dict(zip(PROB_COLUMNS, probs[k].astype(float).tolist())),
                          WINDOWS_COL: int(windows[k])}
        return pd.DataFrame(out, index=batch.index)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model_path}


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
        from ctray.tasks.findings.llm_labeler import FindingsLLMTask

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
    from ctray.io.output import OutputLayout
    from ctray.pipeline.job import run_corpus_job

    stage = build_stage(cfg)
    summary = run_corpus_job(cfg, [stage], fingerprint=_fingerprint(cfg),
                             extra_manifest={"labeler": cfg.labeler})
    if cfg.labeler == "model":
        layout = OutputLayout(summary.output)
        manifest = layout.read_json() or {}
        manifest["chunked_reports"] = chunked_reports(summary.output)
        layout.write_json(manifest)
        summary.manifest = manifest
        print(f"[ctray label-findings] {manifest['chunked_reports']} report(s) were longer than "
              "the model window and were scored in overlapping windows")
    return summary
