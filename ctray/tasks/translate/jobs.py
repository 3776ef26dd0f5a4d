"""Registers ``translate`` and ``eval-translate`` (imported by ctray.jobs.load_job_modules)."""

from ctray.jobs import JobSpec, register

register(JobSpec(
    "translate",
    "translate report sections with an LLM (CT-RATE-JPN method), optional back-translation",
    "ctray.tasks.translate.translate_job:TranslateConfig",
    "ctray.tasks.translate.translate_job:run_translate",
    flags={"--back-translate": "back_translate", "--target-lang": "prompt.target_lang"},
))
register(JobSpec(
    "eval-translate",
    "BLEU / ROUGE of translations against references, and text statistics (markdown + CSV)",
    "ctray.tasks.translate.eval_job:TranslateEvalConfig",
    "ctray.tasks.translate.eval_job:run_translate_eval",
    flags={"--hypotheses": "hypotheses.path", "--references": "references.path"},
    needs_ray=False,
    aliases=("translate-eval",),
))
