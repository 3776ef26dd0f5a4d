"""Registers ``generate-jcb`` and ``score-jcb`` (imported by ctray.jobs.load_job_modules)."""

from ctray.jobs import JobSpec, register

register(JobSpec(
    "generate-jcb",
    "J-ClinicalBench: run a model over the benchmark settings (zero/one-shot), any backend",
    "ctray.tasks.jcb.generate_job:JcbGenerateConfig",
    "ctray.tasks.jcb.generate_job:run_jcb_generate",
    flags={"--benchmarks": "benchmarks", "--model-name": "model_name", "--limit": "limit"},
    aliases=("jcb-generate",),
))
register(JobSpec(
    "score-jcb",
    "J-ClinicalBench: score a generated/ tree; results/ JSON, Table 4 (markdown, CSV, PNG)",
    "ctray.tasks.jcb.score_job:JcbScoreConfig",
    "ctray.tasks.jcb.score_job:run_jcb_score",
    flags={"--generated": "generated", "--strict": "strict",
           "--allow-incomplete": "allow_incomplete", "--benchmarks": "benchmarks",
           "--reference": "reference"},
    needs_ray=False,
    aliases=("jcb-score",),
))
