"""Task packages, one per task: ``ctray/tasks/<x>/`` holds the task's library code and its jobs
(``jobs.py`` registers them; each job lives in ``<short>_job.py``). See docs/architecture.md."""
