"""The ``translate`` job: report sections → translations (+ optional back-translation).

Pass 1 (``<output>/translate``) fans each report out to one row per configured
section and translates it. Pass 2 (``<output>/back_translate``, with
``back_translate: true``) reads pass 1's results and translates them back into
the source language, then scores the back-translation against the source text
(``<output>/back_translate/eval``), a quality signal for corpora without
reference translations. Both passes resume by (report_id, section).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pydantic import Field, model_validator

from ctray.config import LLMJobConfig, offline_backend
from ctray.io.output import OutputLayout
from ctray.llm.config import BackendConfig
from ctray.llm.task import LLMStage
from ctray.pipeline.chain import run_pass, write_chain_manifest
from ctray.pipeline.runner import RunSummary
from ctray.pipeline.stage import LIGHT_TASK
from ctray.tasks.translate.prompts import TranslationPromptConfig, back_translation_prompt
from ctray.tasks.translate.llm_tasks import (BACK_TRANSLATION_COL, SOURCE_COL, TRANSLATION_COL,
                                        TranslateTask, back_translation_rows, section_rows)

log = logging.getLogger(__name__)
KEYS = ("report_id", "section")


def _default_backend() -> BackendConfig:
    return offline_backend(max_tokens=1024, batch_size=8)


class TranslateConfig(LLMJobConfig):
    job: str = "translate"
    backend: BackendConfig = Field(
        default_factory=_default_backend, description="the LLM backend (kind, model, batching)")
    sections: list[str] = Field(
        default_factory=lambda: ["findings", "impressions"], description="Report sections "
        "translated one request each (names of corpus.sections).")
    prompt: TranslationPromptConfig = Field(
        default_factory=TranslationPromptConfig, description="languages, markers and texts of the "
        "translation prompt")
    repair: bool = Field(False, description="One follow-up request when the answer has no usable "
                         "marker line.")
    back_translate: bool = Field(False, description="translate the translations back (a second "
                                 "chained pass)")
    back_backend: BackendConfig | None = Field(
        None, description="Backend of the back-translation pass; None: the same as ``backend``.")
    evaluate_back_translation: bool = Field(
        True, description="score the back-translation against the source (BLEU / ROUGE report in "
        "<output>/back_translate/eval)")

    @model_validator(mode="after")
    def _check_sections(self):
        if self.corpus.text_column:
            raise ValueError("translate works per section: instead of corpus.text_column, "
                             "name the column in corpus.sections, e.g. {report: <column>}, "
                             "and set sections: [report]")
        unknown = [s for s in self.sections if s not in self.corpus.sections]
        if unknown or not self.sections:
            raise ValueError(f"sections {unknown or self.sections} are not in corpus.sections "
                             f"{sorted(self.corpus.sections)}")
        return self


def estimated_cost(usage: dict[str, int], backend: BackendConfig) -> dict[str, Any] | None:
    """USD from configured per-1M-token prices (None when no price is configured)."""
    pin, pout = backend.price_per_1m_input_tokens, backend.price_per_1m_output_tokens
    if pin is None and pout is None:
        return None
    inp = usage.get("prompt_tokens", 0) / 1e6 * (pin or 0.0)
    out = usage.get("completion_tokens", 0) / 1e6 * (pout or 0.0)
    return {"currency": "USD", "price_per_1m_input_tokens": pin,
            "price_per_1m_output_tokens": pout, "input_tokens": usage.get("prompt_tokens", 0),
            "output_tokens": usage.get("completion_tokens", 0),
            "input": round(inp, 6), "output": round(out, 6), "total": round(inp + out, 6),
            "note": "estimate over every run in this folder, failed rows included"}


def _cost(backend: BackendConfig):
    """The ``after_run`` of a translation pass: the cost estimate in its manifest."""
    def cost_fields(output: str, manifest: dict[str, Any]) -> dict[str, Any]:
        cost = estimated_cost(manifest.get("usage", {}), backend)
        if cost is None:
            return {}
        this_run = estimated_cost(manifest["runs"][-1].get("usage", {}), backend)
        cost["this_run_total"] = this_run["total"] if this_run else None
        print(f"[ctray translate] estimated cost: {cost['total']:.4f} USD in total, "
              f"{cost['this_run_total']:.4f} USD this run")
        return {"estimated_cost": cost}

    return cost_fields


def _rate_budget(backend: BackendConfig) -> dict[str, Any]:
    return {"kind": backend.kind, "requests_per_minute": getattr(backend, "requests_per_minute", None),
            "tokens_per_minute": getattr(backend, "tokens_per_minute", None),
            "concurrency": backend.concurrency,
            "max_parallel_requests": getattr(backend, "max_parallel_requests", None)}


def _pass_info(cfg: TranslateConfig, prompt: TranslationPromptConfig, backend: BackendConfig,
               name: str) -> dict[str, Any]:
    return {"translation": {"pass": name, "sections": cfg.sections,
                            "source_lang": prompt.source_lang, "target_lang": prompt.target_lang,
                            "marker": prompt.resolved_marker(), "repair": cfg.repair},
            "rate_budget": _rate_budget(backend)}


def _stage(cfg: TranslateConfig, prompt: TranslationPromptConfig, backend: BackendConfig,
           **task_kwargs) -> LLMStage:
    task = TranslateTask(prompt, max_tokens=backend.max_tokens, temperature=backend.temperature,
                         repair=cfg.repair, **task_kwargs)
    return LLMStage(task, backend)


def run_translate(cfg: TranslateConfig) -> dict[str, RunSummary]:
    from ctray.io.corpus import read_corpus

    started = time.time()
    out = cfg.run.output.rstrip("/")

    def sections():
        return read_corpus(cfg.corpus).map_batches(
            section_rows, fn_kwargs={"sections": cfg.sections,
                                     "all_sections": list(cfg.corpus.sections)},
            batch_format="pandas", **LIGHT_TASK)

    fingerprint = {"prompt": cfg.prompt.model_dump(), "repair": cfg.repair}
    summaries = {"translate": run_pass(
        cfg, "translate", [_stage(cfg, cfg.prompt, cfg.backend)], sections,
        output=f"{out}/translate", key_columns=KEYS, fingerprint=fingerprint,
        extra_manifest=_pass_info(cfg, cfg.prompt, cfg.backend, "translate"),
        after_run=_cost(cfg.backend))}
    if cfg.back_translate:
        summaries["back_translate"] = _run_back_translation(cfg, out)
    write_chain_manifest(cfg, started, out, summaries)
    return summaries


def _run_back_translation(cfg: TranslateConfig, out: str) -> RunSummary | None:
    import ray

    first = OutputLayout(f"{out}/translate").parquet_files("results")
    if not first:
        log.warning("translate: no translations to back-translate yet")
        return None
    prompt = back_translation_prompt(cfg.prompt)
    backend = cfg.back_backend or cfg.backend
    stage = _stage(cfg, prompt, backend, source_column=TRANSLATION_COL,
                   output_column=BACK_TRANSLATION_COL, name="back_translate")
    fingerprint = {"prompt": prompt.model_dump(), "repair": cfg.repair,
                   "forward_prompt": cfg.prompt.model_dump()}
    output = f"{out}/back_translate"

    def rows():
        return ray.data.read_parquet(first).map_batches(back_translation_rows,
                                                        batch_format="pandas", **LIGHT_TASK)

    # The retry replays this pass's failures, then a resuming run back-translates rows
    # that pass 1 has just translated (its own retry); unchanged inputs skip the pass.
    summary = run_pass(cfg, "back_translate", [stage], rows, output=output, key_columns=KEYS,
                       fingerprint=fingerprint,
                       extra_manifest=_pass_info(cfg, prompt, backend, "back_translate"),
                       upstream=[f"{out}/translate"],
                       after_run=_cost(backend))
    if cfg.evaluate_back_translation:
        evaluate_back_translation(cfg, output)
    return summary


def evaluate_back_translation(cfg: TranslateConfig, output: str) -> dict[str, Any] | None:
    from ctray.tasks.translate.eval_job import TranslateEvalConfig, TranslationInput
    from ctray.tasks.translate.evaluation import evaluate

    if not OutputLayout(output).parquet_files("results"):
        return None
    if "://" in output:
        log.warning("translate: the back-translation report is written locally only; run "
                    "eval-translate on %s from a machine that can write there", output)
        return None
    lang = cfg.prompt.source_lang if cfg.prompt.source_lang in ("ja", "en") else "en"
    eval_cfg = TranslateEvalConfig(
        hypotheses=TranslationInput(path=output, label="Back-translation", lang=lang,
                                    text_column=BACK_TRANSLATION_COL),
        references=TranslationInput(path=output, label="Source", lang=lang, text_column=SOURCE_COL),
        sections=cfg.sections, lang=lang, run=cfg.run)
    return evaluate(eval_cfg, output=f"{output}/eval")

