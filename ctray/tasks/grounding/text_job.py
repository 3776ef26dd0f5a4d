"""The ``ground-text`` job: ReXGroundingCT's report processing as three corpus passes.

``<output>/rewrite``     pass 1, one row per report: sentences coded F0../I0.., rewritten
                         and filed under seven regions (L0, H0, ..., I0 + code map)
``<output>/findings``    pass 2, reads pass 1's results: distinct findings per report
``<output>/categories``  pass 3, reads pass 2's results (reports with an abnormal
                         finding only): one schema code per abnormal finding
``<output>/final``       one row per finding, pass 2 left-joined with pass 3

Every pass runs through ``ctray.pipeline.chain.run_pass`` with its own folder, so each has
its own resume, errors table and manifest (and a rerun skips a pass whose inputs have not
changed); a row that failed in one pass simply does not
reach the next. ``<output>/manifest.json`` indexes the passes.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

import pandas as pd
import pyarrow as pa
from pydantic import Field, model_validator

from ctray.config import LLMJobConfig, offline_backend
from ctray.io.output import OutputLayout
from ctray.llm.config import BackendConfig
from ctray.llm.task import LLMStage
from ctray.pipeline.chain import run_pass, write_chain_manifest
from ctray.pipeline.runner import RunSummary
from ctray.pipeline.stage import LIGHT_TASK
from ctray.tasks.grounding.categories import load_categories
from ctray.tasks.grounding.text_checks import CHECKS_VERSION, IMPRESSION_LETTER, REGIONS
from ctray.tasks.grounding.llm_tasks import (CATEGORIES, CODE_MAP, FINDINGS, N_ABNORMAL,
                                              REWRITE, CategoriseTask, ExtractTask,
                                              RewriteTask)

PASSES = ("rewrite", "findings", "categories")
KEY = ("report_id",)
# Shuffle width of the findings/categories join (a few blocks of small per-report rows).
JOIN_PARTITIONS = 4


def _default_backend() -> BackendConfig:
    return offline_backend(max_tokens=2048, batch_size=4)


class GroundTextConfig(LLMJobConfig):
    job: str = "ground-text"
    backend: BackendConfig = Field(
        default_factory=_default_backend, description="the LLM backend (kind, model, batching)")
    categorise_backend: BackendConfig | None = Field(
        None, description="The paper categorised with a smaller model than it rewrote with; None: "
        "`backend`.")
    lang: Literal["auto", "en", "ja"] = Field(
        "auto", description="Sentence splitting of the source sections.")
    repair: bool = Field(True, description="One follow-up request listing the problems when an "
                         "answer fails validation.")
    write_final: bool = Field(True, description="write the joined one-row-per-finding table "
                              "(<output>/final)")

    @model_validator(mode="after")
    def _check_sections(self):
        if self.corpus.text_column or not {"findings", "impressions"} <= set(self.corpus.sections):
            raise ValueError("ground-text reads the report's findings and impressions "
                             "separately: corpus.sections needs both keys 'findings' and "
                             "'impressions' (mapped to your columns) and no corpus.text_column")
        return self


def _keep(batch: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    # Internal columns (_error, ...) travel too: a report that failed while being
    # read must still reach the errors table.
    return batch[[c for c in batch.columns if c in columns or c.startswith("_")]]


def _only_abnormal(batch: pd.DataFrame) -> pd.DataFrame:
    return batch[pd.to_numeric(batch[N_ABNORMAL], errors="coerce").fillna(0) > 0]


def _stages(cfg: GroundTextConfig) -> dict[str, LLMStage]:
    b, c = cfg.backend, cfg.categorise_backend or cfg.backend
    return {
        "rewrite": LLMStage(RewriteTask(b.max_tokens, b.temperature, cfg.repair, cfg.lang), b),
        "findings": LLMStage(ExtractTask(b.max_tokens, b.temperature, cfg.repair), b),
        "categories": LLMStage(CategoriseTask(c.max_tokens, c.temperature, cfg.repair), c),
    }


def _fingerprint(cfg: GroundTextConfig, name: str) -> dict[str, Any]:
    # Prompt versions and backends are recorded per stage by the runner.
    fp: dict[str, Any] = {"pass": name, "checks_version": CHECKS_VERSION, "repair": cfg.repair}
    if name == "rewrite":
        fp["lang"] = cfg.lang
    return fp


def _input(cfg: GroundTextConfig, out: str, name: str):
    """The Dataset a pass reads, or None when the previous pass has no results yet."""
    import ray

    if name == "rewrite":
        from ctray.io.corpus import read_corpus

        keep = ["report_id", "findings", "impressions", *cfg.corpus.keep_columns]
        return read_corpus(cfg.corpus).map_batches(_keep, fn_kwargs={"columns": keep},
                                                   batch_format="pandas", **LIGHT_TASK)
    previous = PASSES[PASSES.index(name) - 1]
    files = OutputLayout(f"{out}/{previous}").parquet_files("results")
    if not files:
        return None
    # Reads and filters are light: the LLM stage's actors must keep their CPUs.
    ds = ray.data.read_parquet(files, **LIGHT_TASK)
    if name == "findings":
        return ds.select_columns(["report_id", REWRITE, CODE_MAP])
    return ds.map_batches(_only_abnormal, batch_format="pandas", **LIGHT_TASK).select_columns(
        ["report_id", FINDINGS])


def _run_pass(cfg: GroundTextConfig, out: str, name: str, stage: LLMStage) -> RunSummary | None:
    # The rewrite pass reads the corpus; each later pass reads the previous pass's results.
    upstream = [] if name == "rewrite" else [f"{out}/{PASSES[PASSES.index(name) - 1]}"]
    return run_pass(cfg, name, [stage], lambda: _input(cfg, out, name), output=f"{out}/{name}",
                    key_columns=KEY, fingerprint=_fingerprint(cfg, name),
                    extra_manifest={"ground_text": {"pass": name}}, upstream=upstream)


def run_ground_text(cfg: GroundTextConfig) -> dict[str, Any]:
    started = time.time()
    out = cfg.run.output.rstrip("/")
    stages = _stages(cfg)
    summaries: dict[str, Any] = {}
    for name in PASSES:
        summaries[name] = _run_pass(cfg, out, name, stages[name])
    if cfg.write_final:
        summaries["final"] = write_final_table(out)
    write_chain_manifest(cfg, started, out, {n: summaries.get(n) for n in PASSES},
                         final=summaries.get("final"))
    return summaries


# --- the joined table -------------------------------------------------------------------

FINAL_SCHEMA = pa.schema([
    ("report_id", pa.string()), ("finding_id", pa.string()), ("phrase", pa.string()),
    ("sentence_codes", pa.string()), ("source_codes", pa.string()), ("regions", pa.string()),
    ("abnormal", pa.bool_()), ("prior_reference", pa.bool_()),
    ("category", pa.string()), ("category_name", pa.string()),
    ("parent_category", pa.string()), ("parent_name", pa.string()),
    ("focality", pa.string()),
    # ok | not_abnormal | missing (categorisation failed or has not run yet)
    ("category_status", pa.string()),
])
_REGION_OF = {letter: region for region, letter in REGIONS.items()}
_REGION_OF[IMPRESSION_LETTER] = "Impressions"


def explode_findings(batch: pd.DataFrame) -> pa.Table:
    """Reports (with ``finding_list`` and maybe ``categories``) → one row per finding."""
    schema = load_categories()
    rows = []
    for rec in batch.to_dict("records"):
        cats = rec.get(CATEGORIES)
        cats = json.loads(cats) if isinstance(cats, str) and cats else None
        for f in json.loads(rec[FINDINGS]):
            code = (cats or {}).get(f["id"]) if f["abnormal"] else None
            status = "ok" if code else ("not_abnormal" if not f["abnormal"] else "missing")
            parent = schema.parent_of(code) if code else None
            regions = dict.fromkeys(_REGION_OF.get(c[:1], "?") for c in f["sentence_codes"])
            rows.append({
                "report_id": rec["report_id"], "finding_id": f["id"], "phrase": f["phrase"],
                "sentence_codes": ",".join(f["sentence_codes"]),
                "source_codes": ",".join(f["source_codes"]), "regions": ";".join(regions),
                "abnormal": bool(f["abnormal"]), "prior_reference": bool(f["prior_reference"]),
                "category": code, "category_name": schema.name_of(code) if code else None,
                "parent_category": parent.code if parent else None,
                "parent_name": parent.name if parent else None,
                "focality": parent.focality if parent else None, "category_status": status,
            })
    frame = pd.DataFrame(rows, columns=FINAL_SCHEMA.names)
    return pa.Table.from_pandas(frame, schema=FINAL_SCHEMA, preserve_index=False)


def write_final_table(out: str) -> dict[str, Any] | None:
    import ray
    from ray.data import SaveMode

    findings = OutputLayout(f"{out}/findings").parquet_files("results")
    if not findings:
        print("[ctray ground-text] no final table: no findings yet")
        return None
    ds = ray.data.read_parquet(findings, **LIGHT_TASK).select_columns(
        ["report_id", FINDINGS])
    categories = OutputLayout(f"{out}/categories").parquet_files("results")
    if categories:
        right = ray.data.read_parquet(categories, **LIGHT_TASK).select_columns(
            ["report_id", CATEGORIES])
        ds = ds.join(right, join_type="left_outer", on=KEY,
                     num_partitions=JOIN_PARTITIONS,
                     aggregator_ray_remote_args=LIGHT_TASK)
    path = f"{out}/final"
    ds.map_batches(explode_findings, batch_format="pandas", **LIGHT_TASK).write_parquet(
        path, mode=SaveMode.OVERWRITE, ray_remote_args=LIGHT_TASK)
    rows = OutputLayout(out).row_count("final")
    print(f"[ctray ground-text] final table: {rows} findings in {path}")
    return {"path": path, "rows": rows}
