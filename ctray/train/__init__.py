"""Ray Train plumbing shared by the trainers (the trainers live with their tasks:
``ctray/tasks/<x>/train_job.py``).

- ``common``: ``ScalingParams``, ``CheckpointParams``, ``make_trainer``, ``check_resume``,
  ``run_locations``, ``export_dir``.
"""

from ctray._api import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "common": ["ScalingParams", "CheckpointParams", "make_trainer", "check_resume", "run_locations", "export_dir"],
})
