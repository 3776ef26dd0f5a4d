"""Registers the ReXGroundingCT jobs (imported by ctray.jobs.load_job_modules)."""

from ctray.jobs import JobSpec, register

# --- text half ------------------------------------------------------------------------
register(JobSpec(
    "ground-text",
    "ReXGroundingCT report processing: rewrite into 7 regions, extract findings, "
    "categorise abnormal findings (three resumable passes + a joined finding table)",
    "ctray.tasks.grounding.text_pipeline:GroundTextConfig",
    "ctray.tasks.grounding.text_pipeline:run_ground_text",
    flags={"--lang": "lang"},
))

# --- imaging half: `segment`, `train-grounding`, `ground-eval` are registered below ---
