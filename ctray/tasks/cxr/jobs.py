"""The CXR labeling jobs (discovered by ctray.jobs.load_job_modules)."""

from ctray.jobs import JobSpec, register

register(JobSpec(
    "train-cxr-labeler",
    "instruction fine-tuning (SFT) of a causal LM as a CXR report labeler (14 CheXpert "
    "observations) with Ray Train; resumes from the latest checkpoint (CT-RATE: "
    "train-findings-labeler)",
    "ctray.tasks.cxr.train_job:TrainLlmLabelerConfig",
    "ctray.tasks.cxr.train_job:run_train_llm_labeler",
    flags={"--model": "model", "--labels": "labels.path",
           "--max-steps": "training.max_steps", "--num-workers": "scaling.num_workers"},
    resumable=False,  # resumes from its checkpoints, not row-wise
    aliases=("train-llm-labeler",),
))
register(JobSpec(
    "label-cxr",
    "label chest X-ray reports with the 14 CheXpert observations (1/0/-1/blank): "
    "CheXpert-style rules with evidence, or an LLM (guided JSON); CheXpert-layout labels.csv",
    "ctray.tasks.cxr.label_job:LabelCxrConfig",
    "ctray.tasks.cxr.label_job:run_label_cxr",
    flags={"--labeler": "labeler", "--answer-format": "llm.answer_format"},
))
register(JobSpec(
    "eval-cxr",
    "the LLM CXR labeler paper's evaluation: weighted F1 per observation over {1,0,-1} and "
    "{1,0}, paired t-test and Wilcoxon between labelers, grouped-bar and difference-heatmap PNGs",
    "ctray.tasks.cxr.eval_job:CxrEvalConfig",
    "ctray.tasks.cxr.eval_job:run_cxr_eval",
    flags={"--gold": "gold.path"},
    needs_ray=False,
    aliases=("cxr-eval",),
))
