"""The LEAVS jobs (discovered by ctray.jobs.load_job_modules)."""

from ctray.jobs import JobSpec, register

register(JobSpec(
    "label-leavs",
    "LEAVS organ x finding-type certainty and urgency labels for abdominal CT reports "
    "(one Ray Data pass per question stage)",
    "ctray.tasks.leavs.leavs_job:LeavsConfig",
    "ctray.tasks.leavs.leavs_job:run_leavs",
    flags={"--fast": "fast", "--no-cot": "no_cot", "--unselected-types": "unselected_types"},
    aliases=("leavs",),
))
register(JobSpec(
    "eval-leavs",
    "score LEAVS labels against the AMOS-MM human annotations (paper Tables 1, 2, 4, 5)",
    "ctray.tasks.leavs.eval_job:LeavsEvalConfig",
    "ctray.tasks.leavs.eval_job:run_leavs_eval",
    flags={"--predictions": "predictions", "--annotations": "annotations"},
    needs_ray=False,
    aliases=("leavs-eval",),
))
