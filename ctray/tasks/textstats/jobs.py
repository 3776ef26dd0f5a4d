"""The ``stats-text`` job (discovered by ctray.jobs.load_job_modules)."""

from ctray.jobs import JobSpec, register

register(JobSpec(
    "stats-text",
    "per-report text statistics (characters, words, sentences)",
    "ctray.tasks.textstats.stats_job:TextStatsConfig",
    "ctray.tasks.textstats.stats_job:run_text_stats",
    aliases=("text-stats",),
))
