"""The ``demo`` job (discovered by ctray.jobs.load_job_modules)."""

from ctray.jobs import JobSpec, register

register(JobSpec(
    "demo",
    "end-to-end chain on the bundled sample reports (CPU, local Ray)",
    "ctray.tasks.demo.demo_job:DemoConfig",
    "ctray.tasks.demo.demo_job:run_demo",
))
