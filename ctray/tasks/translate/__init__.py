"""Report translation (CT-RATE-JPN method) and translation-quality evaluation.

Jobs (registered in ``jobs``): ``translate`` (``translate_job``: section rows → translations,
optional back-translation as a chained pass), ``eval-translate`` (``eval_job``: BLEU / ROUGE
against references, text statistics). Library: ``prompts``, ``task`` (the LLM task and the
section fan-out), ``parsing`` (the translation out of a model answer).
"""

from ctray._api import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "llm_tasks": ["TranslateTask"],
    "prompts": ["TranslationPromptConfig"],
    "parsing": ["extract_translation"],
    "translate_job": ["TranslateConfig", "run_translate"],
    "eval_job": ["TranslateEvalConfig", "run_translate_eval"],
})
