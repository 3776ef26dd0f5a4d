"""``ctray label-cxr``: label chest X-ray reports with the 14 CheXpert observations,
with the rule labeler or an LLM, as Ray Data actor pools through the shared job
runner (resume, per-row errors, manifest).

Results (``results/*.parquet``, written by the workers) hold ``report_id``, the 14
observation columns (float: 1.0 / 0.0 / -1.0, NaN = blank) and, for the rules, the
evidence sentence per label (``evidence_<observation>``). After the run the job
streams them into ``labels.csv`` in the CheXpert labeler's layout (one row per
report, the id then the 14 names, values 1.0 / 0.0 / -1.0 / empty), one results
file at a time.

The default corpus is ctray's own sample in the Open-i layout (``uid``, ``findings``,
``impression``); a generic CSV/JSONL/Parquet with one text column works with
``corpus.text_column`` and ``corpus.id_column``.
"""

from __future__ import annotations

import csv
import io
import math
from importlib import resources
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ctray.config import LLMJobConfig
from ctray.errors import UserError
from ctray.io.corpus import CorpusConfig
from ctray.pipeline.stage import Resources, Stage
from ctray.tasks.cxr.schema import OBSERVATIONS
from ctray.tasks.cxr.stages import FLOAT_TYPES, WINDOWS_COL, CxrEncoderStage, CxrRuleStage

OPENI_SECTIONS = {"findings": "findings", "impression": "impression"}
LABELS_CSV = "labels.csv"


def _sample(name: str) -> str:
    return str(resources.files("ctray") / "data" / name)


def openi_corpus(path: str | None = None, **extra: Any) -> dict[str, Any]:
    """Corpus settings for the Open-i layout: findings + impression, keyed by uid."""
    return {"path": path or _sample("sample_cxr_reports.csv"), "id_column": "uid",
            "sections": dict(OPENI_SECTIONS), "text_sections": ["findings", "impression"],
            **extra}


class EncoderOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: str | None = Field(None, description="folder exported by train-cxr-encoder (local or "
                              "s3://); used by --labeler encoder")
    device: str | None = Field(None, description="cpu / cuda; default: cuda when available")
    batch_size: int = Field(32, description="reports per forward pass")
    num_cpus: float = Field(1.0, description="CPUs per encoder actor")
    num_gpus: float = Field(0.0, description="GPUs per encoder actor")
    rows_per_batch: int = Field(64, description="rows per Ray Data batch")
    concurrency: int | tuple[int, int] = Field(1, description="encoder actors")
    cache_entries: int = Field(100_000, ge=0, description=(
        "sentences and reports each actor remembers it has read (exact: a repeated "
        "sentence is not encoded again); 0 turns it off"))
    dtype: Literal["auto", "float32", "bfloat16"] = Field("auto", description=(
        "compute dtype: auto = bfloat16 on CPUs with native bf16 and bf16 GPUs, else "
        "float32 (encoder_model.inference_dtype)"))
    torch_threads: int | None = Field(None, ge=1, description=(
        "torch threads per actor (default: Ray's, the actor's whole num_cpus)"))


class LLMOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # auto: "sft" when backend.model is a folder exported by train-cxr-labeler (it holds
    # ctray_sft.json), else "json-4class" (the zero-shot prompt with all 14 keys).
    answer_format: Literal["auto", "json-4class", "sft"] = Field(
        "auto", description="auto: sft for a train-cxr-labeler folder, else json-4class "
                            "(zero-shot, all 14 keys)")
    guided_json: bool = Field(True, description="send the JSON schema (enforced by vllm / openai)")
    repair: bool = Field(
        True, description="one follow-up request after an unusable answer (json-4class)")
    lenient: bool = Field(False, description="accept the object inside a code block or prose")
    max_tokens: int = Field(300, description="new tokens per answer")


class RuleOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_cpus: float = Field(0.5, description="CPUs per rule-labeler actor")
    batch_size: int = Field(64, description="reports per batch")
    concurrency: int | tuple[int, int] = Field(
        1, description="rule-labeler actors: n, or (min, max) to autoscale")


class ExportOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    csv: bool = Field(True, description="write labels.csv (CheXpert layout) after the run")
    id_name: str = Field("uid", description="header of the id column in labels.csv")


class LabelCxrConfig(LLMJobConfig):
    #: the labels.csv export is written from the results after the run; the encoder's
    #: reading cache and thread count change its speed, not its labels (encoder.dtype can)
    result_neutral_fields: ClassVar[frozenset[str]] = frozenset(
        {"export", "encoder.cache_entries", "encoder.torch_threads"})
    job: str = "label-cxr"
    corpus: CorpusConfig = Field(
        default_factory=lambda: CorpusConfig(**openi_corpus()), description="the reports to read "
        "(path, columns, limit)")
    labeler: Literal["rules", "llm", "encoder"] = Field(
        "rules", description="rules (CheXpert-style, evidence sentence per label), llm "
                             "(any backend, guided JSON) or encoder (train-cxr-encoder model)")
    encoder: EncoderOptions = Field(default_factory=EncoderOptions,
                                    description="the trained encoder labeler (--labeler encoder)")
    llm: LLMOptions = Field(default_factory=LLMOptions, description="options of the llm labeler")
    rules: RuleOptions = Field(
        default_factory=RuleOptions, description="resources of the rules labeler")
    export: ExportOptions = Field(
        default_factory=ExportOptions, description="the labels.csv export")

    @field_validator("corpus", mode="before")
    @classmethod
    def _corpus_defaults(cls, value):
        # Open-i layout unless the config says otherwise (`--set corpus.limit=10` alone
        # keeps the sample path and the sections).
        if isinstance(value, dict):
            base = openi_corpus(value.get("path"))
            if "text_column" in value:  # a generic one-column corpus: no sections
                base.pop("sections")
                base.pop("text_sections")
            return {**base, **value}
        return value


SFT_MARKER = "ctray_sft.json"  # written by train-cxr-labeler beside the exported weights


def resolve_answer_format(answer_format: str, model: str | None) -> str:
    if answer_format != "auto":
        return answer_format
    import json
    from pathlib import Path

    marker = Path(str(model or "")) / SFT_MARKER
    if marker.is_file():
        try:
            task = json.loads(marker.read_text(encoding="utf-8")).get("task")
        except (OSError, ValueError, AttributeError):
            task = None
        if task not in (None, "cxr"):
            raise UserError(f"{model} was fine-tuned for task {task!r}, not the CXR labels")
        return "sft"
    return "json-4class"


def build_stage(cfg: LabelCxrConfig) -> Stage:
    if cfg.labeler == "encoder":
        e = cfg.encoder
        if not e.model:
            raise UserError("--labeler encoder needs encoder.model: a folder exported by "
                            "ctray train-cxr-encoder (e.g. --set encoder.model=runs/train_cxr_encoder/model)")
        return CxrEncoderStage(e.model, device=e.device, batch_size=e.batch_size,
                               cache_entries=e.cache_entries, torch_threads=e.torch_threads,
                               dtype=e.dtype,
                               resources=Resources(num_cpus=e.num_cpus, num_gpus=e.num_gpus,
                                                   batch_size=e.rows_per_batch,
                                                   concurrency=e.concurrency))
    if cfg.labeler == "rules":
        r = cfg.rules
        return CxrRuleStage(resources=Resources(num_cpus=r.num_cpus, batch_size=r.batch_size,
                                                concurrency=r.concurrency))
    from ctray.llm.task import LLMStage
    from ctray.tasks.cxr.llm_tasks import CxrLLMTask

    o = cfg.llm
    task = CxrLLMTask(max_tokens=o.max_tokens, temperature=cfg.backend.temperature,
                      guided_json=o.guided_json, repair=o.repair, lenient=o.lenient,
                      answer_format=resolve_answer_format(o.answer_format, cfg.backend.model))
    task.prompt_version()  # fails early (UserError) when the sft format is not installed
    stage = LLMStage(task, cfg.backend)
    stage.output_types = dict(FLOAT_TYPES)
    return stage


def _fingerprint(cfg: LabelCxrConfig) -> dict[str, Any]:
    import hashlib

    out: dict[str, Any] = {"labeler": cfg.labeler}
    if cfg.labeler == "encoder":
        out["encoder"] = {"model": cfg.encoder.model, "meta_sha": _encoder_digest(cfg.encoder.model)}
    elif cfg.labeler == "llm":
        out["llm"] = {**cfg.llm.model_dump(), "answer_format": resolve_answer_format(
            cfg.llm.answer_format, cfg.backend.model)}
    else:
        from pathlib import Path

        from ctray.tasks.cxr import context, patterns, rules

        # The phrase lists and scope rules decide the labels: labels of a changed rule set
        # must not mix into a resumed run, so their source is part of the fingerprint.
        digest = hashlib.sha256()
        for module in (patterns, context, rules):
            digest.update(Path(module.__file__).read_bytes())
        out["rules_version"] = digest.hexdigest()[:12]
    return out


def _encoder_digest(model: str | None) -> str | None:
    """Hash of the exported weights' meta and heads: labels of a retrained model must not
    mix into a resumed run under the same folder name."""
    import hashlib
    from pathlib import Path

    from ctray.tasks.cxr.encoder_model import HEADS_FILE, META_FILE

    if not model or "://" in model:
        return None
    digest = hashlib.sha256()
    for name in (META_FILE, HEADS_FILE):
        file = Path(model) / name
        if file.is_file():
            digest.update(file.read_bytes())
    return digest.hexdigest()[:12]


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{float(value):.1f}"


def export_labels_csv(output: str, id_name: str = "uid") -> tuple[str, int]:
    """Write the results as ``<output>/labels.csv`` (CheXpert layout), reading one
    Parquet file (a few hundred rows) at a time; rows keep the files' order."""
    import pyarrow.parquet as pq

    from ctray.io.output import OutputLayout, resolve_fs, write_bytes_atomic

    layout = OutputLayout(output)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([id_name, *OBSERVATIONS])
    rows = 0
    for uri in layout.parquet_files("results"):
        filesystem, path = resolve_fs(uri)
        with filesystem.open_input_file(path) as f:
            table = pq.ParquetFile(f).read(columns=["report_id", *OBSERVATIONS])
        frame = table.to_pandas()
        for rec in frame.itertuples(index=False):
            writer.writerow([rec[0], *(_cell(v) for v in rec[1:])])
            rows += 1
    target = layout.path(LABELS_CSV)
    write_bytes_atomic(target, buf.getvalue().encode("utf-8"))
    return target, rows


def run_label_cxr(cfg: LabelCxrConfig):
    from ctray.pipeline.job import run_corpus_job

    def export(output: str, manifest: dict[str, Any]) -> dict[str, Any]:
        if not cfg.export.csv:
            return {}
        try:
            target, rows = export_labels_csv(output, cfg.export.id_name)
        except KeyError as exc:  # pragma: no cover - a results folder of another job
            raise UserError(f"{output}: results lack column {exc}") from None
        print(f"[ctray label-cxr] {rows} reports in {target} (CheXpert layout)")
        return {"labels_csv": {"path": target, "rows": rows}}

    return run_corpus_job(cfg, [build_stage(cfg)], fingerprint=_fingerprint(cfg),
                          extra_manifest={"labeler": cfg.labeler}, after_run=export)
