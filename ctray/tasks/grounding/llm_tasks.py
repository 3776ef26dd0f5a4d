"""The three LLM tasks of the ReXGroundingCT text pipeline.

Each task validates the answer twice over: the JSON schema (also sent with the
request, so vLLM / OpenAI structured output can enforce it while decoding) and the
semantic checks of :mod:`text_checks` that a schema cannot express. A failing
answer gets one repair turn listing the problems; a second failure is a row error
with the raw answer kept by :class:`~ctray.llm.task.LLMStage`.

Nested results are stored as JSON strings: their shape varies per report, and a
string column keeps every Parquet shard's schema identical.
"""

from __future__ import annotations

import json
from typing import Any

from ctray.llm.base import LLMRequest, LLMResponse
from ctray.llm.prompts import PromptTemplate
from ctray.llm.task import LLMTask
from ctray.pipeline.stage import RowError
from ctray.tasks.grounding import prompts as P
from ctray.tasks.grounding.categories import load_categories
from ctray.tasks.grounding.text_checks import (FINDINGS_SCHEMA, REWRITE_SCHEMA, CheckError,
                                               categories_schema, check_categories,
                                               check_findings, check_rewrite, code_sentences,
                                               load_json_object)

# Output columns (pass 1, 2, 3).
SOURCE_SENTENCES = "source_sentences"
REWRITE = "rewrite"
CODE_MAP = "code_map"
N_SOURCE = "n_source_sentences"
N_REWRITTEN = "n_rewritten_sentences"
FINDINGS = "finding_list"
N_FINDINGS = "n_findings"
N_ABNORMAL = "n_abnormal"
CATEGORIES = "categories"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _row_json(row: dict[str, Any], column: str) -> Any:
    value = row.get(column)
    if not isinstance(value, str) or not value:
        raise RowError(f"row {row.get('report_id')!r}: field {column!r} is missing")
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        raise RowError(f"row {row.get('report_id')!r}: field {column!r} is not valid "
                       "JSON") from None


class _JSONTask(LLMTask):
    """Shared request / parse / repair plumbing of the three steps."""

    template: PromptTemplate

    def __init__(self, max_tokens: int = 2048, temperature: float = 0.0, repair: bool = True):
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.repair = repair

    def prompts(self) -> list[PromptTemplate]:
        return [self.template]

    # subclasses: the prompt fields, the request schema, and the checks
    def fields(self, row: dict[str, Any]) -> dict[str, str]:
        raise NotImplementedError

    def schema(self, row: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def check(self, row: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def build_request(self, row: dict[str, Any]) -> LLMRequest:
        return LLMRequest(self.template.render(**self.fields(row)), max_tokens=self.max_tokens,
                          temperature=self.temperature, json_schema=self.schema(row))

    def parse(self, row: dict[str, Any], response: LLMResponse) -> dict[str, Any]:
        try:
            return self.check(row, load_json_object(response.text))
        except CheckError as exc:
            # Problems name codes and measurements only, so the message is safe to log.
            raise RowError(f"row {row.get('report_id')!r}: {self.name}: {exc}") from None

    def repair_request(self, row: dict[str, Any], response: LLMResponse,
                       error: RowError) -> LLMRequest | None:
        if not self.repair:
            return None
        first = self.build_request(row)
        problems = str(error).split(f"{self.name}: ", 1)[-1].split("; ")
        messages = first.messages + [{"role": "assistant", "content": response.text},
                                     {"role": "user", "content": P.repair_message(problems)}]
        return LLMRequest(messages, max_tokens=self.max_tokens, temperature=self.temperature,
                          json_schema=first.json_schema)


class RewriteTask(_JSONTask):
    """Step 1: report sentences (F/I codes) → American-style sentences in 7 regions."""

    name = "ground_rewrite"
    input_columns = ("report_id", "findings", "impressions")
    output_columns = (SOURCE_SENTENCES, REWRITE, CODE_MAP, N_SOURCE, N_REWRITTEN)
    template = P.REWRITE

    def __init__(self, max_tokens: int = 2048, temperature: float = 0.0, repair: bool = True,
                 lang: str = "auto"):
        super().__init__(max_tokens, temperature, repair)
        self.lang = lang

    def source(self, row: dict[str, Any]) -> dict[str, str]:
        coded = code_sentences(row.get("findings"), row.get("impressions"), self.lang)
        if not coded:
            raise RowError(f"row {row.get('report_id')!r}: fields 'findings' and 'impressions' "
                           "hold no sentences")
        return coded

    def fields(self, row):
        return {"sentences": P.dumps(self.source(row))}

    def schema(self, row):
        return REWRITE_SCHEMA

    def check(self, row, answer):
        source = self.source(row)
        rewrite = check_rewrite(source, answer)
        return {SOURCE_SENTENCES: _json(source), REWRITE: _json(rewrite.as_report()),
                CODE_MAP: _json(rewrite.code_map), N_SOURCE: len(source),
                N_REWRITTEN: len(rewrite.code_map)}


def rewritten_sentences(row: dict[str, Any]) -> dict[str, str]:
    report = _row_json(row, REWRITE)
    out = {c: t for region in report.get("Findings", {}).values() for c, t in region.items()}
    out.update(report.get("Impressions", {}))
    return out


class ExtractTask(_JSONTask):
    """Step 2: a rewritten report → distinct findings with codes and Y/N flags."""

    name = "ground_findings"
    input_columns = ("report_id", REWRITE, CODE_MAP)
    output_columns = (FINDINGS, N_FINDINGS, N_ABNORMAL)
    template = P.EXTRACT

    def fields(self, row):
        report = _row_json(row, REWRITE)
        # Empty regions are left out of the prompt: shorter, and nothing to cite there.
        shown = {"Findings": {r: s for r, s in report["Findings"].items() if s},
                 "Impressions": report["Impressions"]}
        return {"report": P.dumps(shown)}

    def schema(self, row):
        return FINDINGS_SCHEMA

    def check(self, row, answer):
        findings = check_findings(rewritten_sentences(row), _row_json(row, CODE_MAP), answer)
        return {FINDINGS: _json(findings), N_FINDINGS: len(findings),
                N_ABNORMAL: sum(f["abnormal"] for f in findings)}


class CategoriseTask(_JSONTask):
    """Step 3: the abnormal findings of one report → schema codes.

    One request per report, not per finding: the ~60-code schema and its rules are
    most of the prompt, so a per-finding request would pay for them once per finding
    (several times the input tokens for a typical report), while the paper's own
    design also classifies a report's findings together."""

    name = "ground_categories"
    input_columns = ("report_id", FINDINGS)
    output_columns = (CATEGORIES,)
    template = P.CATEGORISE

    def abnormal(self, row: dict[str, Any]) -> dict[str, str]:
        found = {f["id"]: f["phrase"] for f in _row_json(row, FINDINGS) if f.get("abnormal")}
        if not found:
            raise RowError(f"row {row.get('report_id')!r}: no abnormal findings to categorise")
        return found

    def fields(self, row):
        return {"findings": P.dumps(self.abnormal(row))}

    def schema(self, row):
        return categories_schema(list(self.abnormal(row)),
                                 load_categories().assignable_codes())

    def check(self, row, answer):
        codes = check_categories(list(self.abnormal(row)), answer,
                                 load_categories())
        return {CATEGORIES: _json(codes)}
