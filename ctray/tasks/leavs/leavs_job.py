"""The ``label-leavs`` job: LEAVS labels for a corpus, one Ray Data pass per question stage.

The published implementation walks one report at a time through ~hundreds of
dependent prompts. Here each question stage is asked for *all* rows of the corpus
in one pass (one ``run_corpus_job`` with its own output folder and keys), so the
engine always has large batches whose prompts share their instruction prefix:

    filter_list    (report, organ)              which sentences concern the organ
    filter_check   (report, organ, sentence)    each remaining sentence, yes/no
    finding_types  (report, organ)              multiple choice over 11 types
    certainty      (report, organ, type)        six options -> release codes
    urgency        (report, organ, type)        present/possible findings only

Between passes rows fan out with ``map_batches`` and fan in with ``groupby``
over the previous pass's Parquet results. Every pass resumes, keeps per-row
errors and writes its manifest; the final assembly writes the labels (Parquet
and the release CSV layout), per-report LLM usage and the top manifest.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from contextlib import contextmanager
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from ctray.config import LLMJobConfig, offline_backend, sample_path
from ctray.io.corpus import CorpusConfig
from ctray.io.output import OutputLayout
from ctray.llm.config import BackendConfig
from ctray.pipeline.chain import run_pass, write_chain_manifest
from ctray.pipeline.runner import RunSummary
from ctray.pipeline.stage import LIGHT_TASK
from ctray.tasks.leavs import assemble as A
from ctray.tasks.leavs import schema
from ctray.tasks.leavs.fanout import (ORGAN_KEYS, SENTENCE_KEYS, TYPE_KEYS, certainty_rows,
                                      check_rows, organ_rows, type_rows, urgency_rows)
from ctray.tasks.leavs.llm_tasks import QUESTIONS
from ctray.tasks.leavs.stages import question_stage
from ctray.tasks.leavs.assemble import LeavsRun

log = logging.getLogger(__name__)

PASSES = ("filter_list", "filter_check", "finding_types", "certainty", "urgency")
PASS_KEYS = {"filter_list": ORGAN_KEYS, "filter_check": SENTENCE_KEYS,
             "finding_types": ORGAN_KEYS, "certainty": TYPE_KEYS, "urgency": TYPE_KEYS}
# Stage results -> event kind for the fan-in.
PASS_EVENTS = {"filter_list": "list", "filter_check": "check", "finding_types": "types",
               "certainty": "certainty", "urgency": "urgency"}


def _default_corpus() -> CorpusConfig:
    return CorpusConfig(path=sample_path("sample_abdominal_reports.jsonl"),
                        id_column="report_id", text_column="text")


def _default_backend() -> BackendConfig:
    return offline_backend(max_tokens=384, batch_size=8)


class LeavsConfig(LLMJobConfig):
    #: the release CSV's name and how Ray shuffles decide no answer
    result_neutral_fields: ClassVar[frozenset[str]] = frozenset(
        {"csv_name", "shuffle_partitions", "shuffle_strategy"})
    job: str = "label-leavs"
    corpus: CorpusConfig = Field(
        default_factory=_default_corpus, description="the reports to read (path, columns, limit)")
    backend: BackendConfig = Field(
        default_factory=_default_backend, description="the LLM backend (kind, model, batching)")
    organs: list[str] = Field(
        default_factory=lambda: list(schema.ORGANS), description="Organs or body regions to label "
        "(the release's nine by default).")
    fast: bool = Field(False, description="Skip the per-sentence check of sentence filtration "
                       '(paper: "fast", 3x quicker).')
    no_cot: bool = Field(False, description="Ask for the answer directly instead of reasoning "
                         "first and summarising.")
    unselected_types: Literal["ask", "not_mentioned"] = Field(
        "ask", description='"ask": certainty is asked for all 11 types (separates "stated absent" '
        'from "not mentioned"); "not_mentioned": only for the chosen types, the rest -2.')
    cot_max_tokens: int | None = Field(None, description="Length of the reasoning answers; None: "
                                       "backend.max_tokens.")
    repair: bool = Field(True, description="One follow-up request when an answer cannot be parsed.")
    csv_name: str = Field(A.CSV_NAME, description="file name of the release-layout CSV")
    shuffle_partitions: int | None = Field(
        None, description="Partitions of the groupby/join shuffles (fan-in, resume, per-report "
        "usage); None: Ray's default (200), right for large corpora; a few for small runs and "
        "tests.")
    shuffle_strategy: str | None = Field(None, description="Ray Data shuffle strategy for the "
                                         'groupbys, e.g. "sort_shuffle_pull_based" (no aggregator '
                                         "actors to start: much faster on small runs); None: "
                                         "Ray's default.")

    @field_validator("shuffle_strategy")
    @classmethod
    def _strategy(cls, value: str | None) -> str | None:
        from ray.data.context import ShuffleStrategy

        known = [s.value for s in ShuffleStrategy]
        if value is not None and value not in known:
            raise ValueError(f"shuffle_strategy {value!r} is not one of {known}")
        return value

    @field_validator("organs")
    @classmethod
    def _organs(cls, value: list[str]) -> list[str]:
        cleaned = [o.strip().lower() for o in value]
        if not cleaned or any(not o for o in cleaned) or len(set(cleaned)) != len(cleaned):
            raise ValueError(f"organs must be distinct non-empty names, got {value}")
        return cleaned


def _results(out: str, name: str, columns: list[str] | None = None):
    import ray

    files = OutputLayout(f"{out}/{name}").parquet_files("results")
    return ray.data.read_parquet(files, columns=columns, **LIGHT_TASK) if files else None


def _pass_fingerprint(cfg: LeavsConfig, name: str) -> dict[str, Any]:
    """What the answers of ``name`` depend on beyond its own prompts and model: the
    prompts of the stages that chose its inputs, and the filtration mode."""
    upstream = PASSES[:PASSES.index(name)]
    return {"pass": name, "cot": not cfg.no_cot,
            "fast": cfg.fast if name != "filter_list" else None,
            "upstream_prompts": {p: _question_stage(cfg, p).describe().get("prompt_version")
                                 for p in upstream}}


def _question_stage(cfg: LeavsConfig, name: str):
    return question_stage(QUESTIONS[name](), cfg.backend, cot=not cfg.no_cot,
                          cot_max_tokens=cfg.cot_max_tokens or cfg.backend.max_tokens,
                          repair=cfg.repair)


# The stages whose results a stage's input rows are made from.
UPSTREAM = {"filter_check": ("filter_list",), "finding_types": ("filter_list", "filter_check"),
            "certainty": ("finding_types",), "urgency": ("certainty",)}


def _run_pass(cfg: LeavsConfig, out: str, name: str, make_ds) -> RunSummary | None:
    print(f"[ctray label-leavs] stage {PASSES.index(name) + 1}/{len(PASSES)}: {name}")
    extra = {"leavs": {"pass": name, "keys": list(PASS_KEYS[name]), "cot": not cfg.no_cot,
                       "fast": cfg.fast, "unselected_types": cfg.unselected_types}}
    upstream = [f"{out}/{u}" for u in UPSTREAM.get(name, ())
                if not (cfg.fast and u == "filter_check")]
    # Later stages' keys are unique by construction (fanned out from unique keys), so
    # the duplicate-key check, a full extra execution with a shuffle, is skipped; the
    # first stage, reading the corpus, resumes after a retry too (unattempted rows).
    return run_pass(cfg, name, [_question_stage(cfg, name)], make_ds, output=f"{out}/{name}",
                    key_columns=PASS_KEYS[name], fingerprint=_pass_fingerprint(cfg, name),
                    extra_manifest=extra, upstream=upstream,
                    signature_extra={"fast": cfg.fast, "unselected_types": cfg.unselected_types},
                    check_duplicate_keys=name == PASSES[0], resume_after_retry=True)


def organ_dataset(cfg: LeavsConfig):
    from ctray.io.corpus import read_corpus

    return read_corpus(cfg.corpus).map_batches(
        organ_rows, fn_kwargs={"organs": cfg.organs}, batch_format="pandas", **LIGHT_TASK)


def _event_parts(out: str, passes) -> list:
    parts = []
    for name in passes:
        kind = PASS_EVENTS[name]
        fields = list(A.EVENT_FIELDS[kind])
        ds = _results(out, name, ["report_id", "organ", *fields])
        if ds is not None:
            parts.append(ds.map_batches(A.events, fn_kwargs={"kind": kind, "fields": fields},
                                        batch_format="pandas", **LIGHT_TASK))
    return parts


def _union(parts: list):
    # Ray's union of one dataset with nothing fails at execution (it needs two inputs);
    # a run whose passes all failed has the corpus rows alone.
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def filtered_organs(out: str, fast: bool, partitions: int | None = None):
    """Fan-in of sentence filtration: per (report, organ), the union of both steps."""
    parts = _event_parts(out, ["filter_list"] + ([] if fast else ["filter_check"]))
    if not parts:
        return None
    return _union(parts).groupby(list(ORGAN_KEYS), num_partitions=partitions).map_groups(
        A.combine_filter, fn_kwargs={"fast": fast}, batch_format="pandas", **LIGHT_TASK)


def _stage_inputs(cfg: LeavsConfig, out: str):
    ask = cfg.unselected_types == "ask"

    def after(name, fn, **kwargs):
        def make():
            ds = _results(out, name)
            return None if ds is None else ds.map_batches(fn, fn_kwargs=kwargs,
                                                          batch_format="pandas", **LIGHT_TASK)
        return make

    def types():
        ds = filtered_organs(out, cfg.fast, cfg.shuffle_partitions)
        return None if ds is None else ds.map_batches(type_rows, batch_format="pandas", **LIGHT_TASK)

    return {"filter_list": lambda: organ_dataset(cfg),
            "filter_check": after("filter_list", check_rows),
            "finding_types": types,
            "certainty": after("finding_types", certainty_rows, ask_unselected=ask),
            "urgency": after("certainty", urgency_rows)}


def assemble_labels(cfg: LeavsConfig, out: str, run_id: str) -> dict[str, Any]:
    """Group all stages' rows by (report, organ); workers write labels and CSV shards."""
    A.clear_outputs(out)
    base = organ_dataset(cfg).map_batches(
        A.events, fn_kwargs={"kind": "base", "fields": list(A.EVENT_FIELDS["base"])},
        batch_format="pandas", **LIGHT_TASK)
    used = [p for p in PASSES if not (cfg.fast and p == "filter_check")]
    parts = [base] + _event_parts(out, used)
    grouped = _union(parts).groupby(
        list(ORGAN_KEYS), num_partitions=cfg.shuffle_partitions).map_groups(
        A.assemble_group, fn_kwargs={"fast": cfg.fast,
                                     "ask_unselected": cfg.unselected_types == "ask"},
        batch_format="pandas", **LIGHT_TASK)
    counts = grouped.map_batches(A.write_labels_shard, fn_kwargs={"out": out, "run_id": run_id},
                                 batch_format="pandas", **LIGHT_TASK, batch_size=1024).take_all()
    by_status: dict[str, int] = {}
    for c in counts:
        for status, n in json.loads(c["by_status"]).items():
            by_status[status] = by_status.get(status, 0) + int(n)
    csv = A.concat_csv(out, cfg.csv_name)
    return {"organs_labelled": sum(int(c["ok"]) for c in counts),
            "organs_incomplete": sum(int(c["incomplete"]) for c in counts),
            "incomplete_by_stage": by_status, "csv": csv, "parquet": f"{out}/labels",
            "incomplete_table": f"{out}/incomplete"}


def usage_per_report(out: str, partitions: int | None = None) -> dict[str, Any]:
    """Per-report LLM calls and tokens by stage: a Ray groupby over the per-organ usage
    the assembly wrote; workers write the table and return sums, the driver adds them."""
    import ray
    from ray.data.aggregate import Sum

    files = [f for sub in ("labels", "incomplete") for f in OutputLayout(out).parquet_files(sub)]
    if not files:
        return {"reports": 0}
    per_report = ray.data.read_parquet(files, columns=["report_id", *A.USAGE_COLUMNS], **LIGHT_TASK).groupby(
        "report_id", num_partitions=partitions).aggregate(
        *[Sum(c, alias_name=c) for c in A.USAGE_COLUMNS])
    shards = per_report.map_batches(A.write_usage_shard, fn_kwargs={"out": out},
                                    batch_format="pandas", **LIGHT_TASK, batch_size=4096).take_all()
    return {"table": f"{out}/usage_per_report", **A.combine_usage_stats(shards)}


@contextmanager
def _data_context(cfg: LeavsConfig):
    """Shuffle settings for this job only; shuffles it does not size itself (the
    corpus duplicate-id check) use them too."""
    from ray.data import DataContext
    from ray.data.context import ShuffleStrategy

    ctx = DataContext.get_current()
    before = (ctx.default_hash_shuffle_parallelism, ctx.shuffle_strategy)
    if cfg.shuffle_partitions:
        ctx.default_hash_shuffle_parallelism = cfg.shuffle_partitions
    if cfg.shuffle_strategy:
        ctx.shuffle_strategy = ShuffleStrategy(cfg.shuffle_strategy)
    try:
        yield
    finally:
        ctx.default_hash_shuffle_parallelism, ctx.shuffle_strategy = before


def run_leavs(cfg: LeavsConfig) -> LeavsRun:
    started = time.time()
    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    out = cfg.run.output.rstrip("/")
    inputs = _stage_inputs(cfg, out)
    passes = [p for p in PASSES if not (cfg.fast and p == "filter_check")]
    summaries: dict[str, RunSummary | None] = {}
    with _data_context(cfg):
        for name in passes:
            summaries[name] = _run_pass(cfg, out, name, inputs[name])
        print("[ctray label-leavs] assembling labels per (report, organ)")
        labels = assemble_labels(cfg, out, run_id)
        per_report = usage_per_report(out, cfg.shuffle_partitions)
    by_stage = {p: (summaries[p].manifest["usage"] if summaries[p] else None) for p in passes}
    manifest = write_chain_manifest(
        cfg, started, out, summaries, run_id=run_id,
        design={"passes": passes, "keys": {p: list(PASS_KEYS[p]) for p in passes},
                "cot": not cfg.no_cot, "fast": cfg.fast,
                "unselected_types": cfg.unselected_types, "organs": cfg.organs},
        usage_by_stage=by_stage, per_report=per_report, labels=labels)
    print(f"[ctray label-leavs] {labels['organs_labelled']} organs labelled, "
          f"{labels['organs_incomplete']} incomplete {labels['incomplete_by_stage'] or ''}; "
          f"{manifest['this_run_usage']['llm_calls']} LLM calls this run; "
          f"labels {labels['parquet']}, CSV {labels['csv']}, manifest {out}/manifest.json")
    return LeavsRun(out, summaries, manifest, labels["csv"])
