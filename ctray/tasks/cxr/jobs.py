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
    "CheXpert-style rules with evidence, an LLM (guided JSON) or a trained encoder "
    "(train-cxr-encoder); CheXpert-layout labels.csv",
    "ctray.tasks.cxr.label_job:LabelCxrConfig",
    "ctray.tasks.cxr.label_job:run_label_cxr",
    flags={"--labeler": "labeler", "--answer-format": "llm.answer_format",
           "--encoder-model": "encoder.model"},
))
register(JobSpec(
    "eval-cxr",
    "the LLM CXR labeler paper's evaluation: weighted F1 per observation over {1,0,-1} and "
    "{1,0}, paired t-test and Wilcoxon between labelers, grouped-bar and difference-heatmap PNGs",
    "ctray.tasks.cxr.eval_job:CxrEvalConfig",
    "ctray.tasks.cxr.eval_job:run_cxr_eval",
    flags={"--gold": "gold.path", "--allow-partial": "allow_partial"},
    needs_ray=False,
    aliases=("cxr-eval",),
))
register(JobSpec(
    "train-cxr-encoder",
    "CheXbert-style CXR encoder labeler with Ray Train: an encoder + 14 heads learns the rule "
    "labels of a corpus (dev gold excluded), then fine-tunes on gold labels with k-fold "
    "cross-validation; exports a folder for label-cxr --labeler encoder and Ray Serve",
    "ctray.tasks.cxr.encoder_train_job:TrainCxrEncoderConfig",
    "ctray.tasks.cxr.encoder_train_job:run_train_cxr_encoder",
    flags={"--model": "model", "--labels": "labels.path", "--epochs": "training.epochs",
           "--num-workers": "scaling.num_workers"},
    resumable=False,  # resumes from its checkpoints, not row-wise
))
