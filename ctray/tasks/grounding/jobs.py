"""Registers the ReXGroundingCT jobs (imported by ctray.jobs.load_job_modules)."""

from ctray.jobs import JobSpec, register

# --- text half ------------------------------------------------------------------------
register(JobSpec(
    "ground-text",
    "ReXGroundingCT report processing: rewrite into 7 regions, extract findings, "
    "categorise abnormal findings (three resumable passes + a joined finding table)",
    "ctray.tasks.grounding.text_job:GroundTextConfig",
    "ctray.tasks.grounding.text_job:run_ground_text",
    flags={"--lang": "lang"},
))

# --- imaging half -------------------------------------------------------------------
register(JobSpec(
    "segment",
    "text-prompted 3D segmentation: one uint8 NIfTI mask per finding sentence, on the "
    "scan's own grid (resumable Ray Data pass; unreadable volumes become row errors)",
    "ctray.tasks.grounding.segment_job:SegmentConfig",
    "ctray.tasks.grounding.segment_job:run_segment",
    flags={"--manifest": "manifest.path", "--model-dir": "model",
           "--text-encoder": "text_encoder", "--masks-dir": "masks_dir"},
))
register(JobSpec(
    "train-grounding",
    "train the text-conditioned 3D U-Net on (volume, finding sentence, mask) triples with "
    "Ray Train (resumes from the last epoch's checkpoint; exports a model for segment)",
    "ctray.tasks.grounding.train_job:TrainGroundingConfig",
    "ctray.tasks.grounding.train_job:run_train_grounding",
    flags={"--manifest": "manifest.path", "--text-encoder": "text_encoder",
           "--epochs": "training.epochs", "--num-workers": "scaling.num_workers"},
    resumable=False,  # resumes from its checkpoints, not row-wise
))
register(JobSpec(
    "eval-grounding",
    "per-finding Dice, HIT rates (Dice above 0.05 / 0.10), focal/non-focal and size groups "
    "with bootstrap CIs from predicted and ground-truth masks (Table-4 markdown + CSV, PNG)",
    "ctray.tasks.grounding.eval_job:GroundEvalConfig",
    "ctray.tasks.grounding.eval_job:run_ground_eval",
    flags={"--predictions": "predictions", "--ground-truth": "ground_truth.path"},
    needs_ray=False,
    aliases=("ground-eval",),
))
