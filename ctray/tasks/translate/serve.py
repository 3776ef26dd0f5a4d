"""Serve app of report translation (``serve/translate.yaml``): the sections of one report
through the translate job's prompts, on the LLM backend the replica holds."""

# No ``from __future__ import annotations``: FastAPI and Serve read the annotations.

from typing import Any

from fastapi import Request
from pydantic import Field
from ray import serve
from ray.serve import Application

from ctray.serving.batching import Outcome
from ctray.serving.llm_service import LLMAppArgs, LLMService, LLMUserConfig
from ctray.serving.schemas import TranslateRequest, TranslateResponse, TranslationItem
from ctray.serving.service import coerce, ingress, service_api, user_config
from ctray.tasks.translate.prompts import TranslationPromptConfig
from ctray.tasks.translate.llm_tasks import SECTION_COL, SOURCE_COL, TRANSLATION_COL, TranslateTask


@serve.deployment(max_ongoing_requests=16, max_queued_requests=128,
                  ray_actor_options={"num_cpus": 1})
@ingress(service_api("ctray report translation",
                     "Translates the sections of one radiology report with an LLM (the "
                     "prompts of the translate job). Text is never logged."),
         TranslateRequest, TranslateResponse, path="/report")
class TranslatorService(LLMService):
    """One report's sections per request, each a row of the translate task."""

    app_label = "translate"

    def __init__(self, prompt: TranslationPromptConfig, backend,
                 max_tokens: int = 1024, repair: bool = True) -> None:
        self.prompt = prompt
        self._init_llm(TranslateTask(prompt, max_tokens=max_tokens, repair=repair), backend)

    async def label(self, body: TranslateRequest, request: Request) -> TranslateResponse:
        """``POST /report``: every section translated (a section fails alone)."""
        names = list(body.sections)

        async def run(positions: list[int], texts: list[str]) -> list[Outcome]:
            return await self.run_rows([
                {"report_id": body.id or "request", SECTION_COL: names[i], SOURCE_COL: text}
                for i, text in zip(positions, texts)])

        outcomes = await self.run_texts(list(body.sections.values()), request, run,
                                        keys=names, field="sections", batched=True)
        sections = {
            name: TranslationItem(error=o.error, batch_size=o.batch_size) if o.error else
            TranslationItem(translation=o.value[TRANSLATION_COL], batch_size=o.batch_size)
            for name, o in zip(names, outcomes)}
        return TranslateResponse(model=self.model_name(), id=body.id,
                                 prompt_version=self.stage.task.prompt_version(),
                                 source_lang=self.prompt.source_lang,
                                 target_lang=self.prompt.target_lang, sections=sections)


class TranslateAppArgs(LLMAppArgs):
    """Batching, limits, backend, the prompt and the answer budget."""

    prompt: TranslationPromptConfig = Field(default_factory=TranslationPromptConfig,
                                            description="languages and prompt of the task")
    max_tokens: int = Field(default=1024, ge=1, description="new tokens per section")
    repair: bool = Field(default=True, description="ask once more after an unreadable answer")


def translate_app(args: TranslateAppArgs, **options: Any) -> Application:
    """The translation app; ``options`` are Serve deployment options."""
    args = coerce(TranslateAppArgs, args)
    return TranslatorService.options(user_config=user_config(args, LLMUserConfig),
                                     **options).bind(args.prompt, args.backend,
                                                     args.max_tokens, args.repair)


def build_translate_app(args: TranslateAppArgs) -> Application:
    """``import_path`` of serve/translate.yaml."""
    return translate_app(args)
