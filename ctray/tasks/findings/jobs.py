"""The findings jobs (discovered by ctray.jobs.load_job_modules)."""

from ctray.jobs import JobSpec, register

register(JobSpec(
    "train-findings",
    "fine-tune a BERT-style classifier on the 18 CT-RATE findings with Ray Train "
    "(CT-BERT-JPN recipe; English: the packaged all-minilm-l6-v2 encoder, offline; gold or "
    "rule labels; split by patient; resumes from the last checkpoint)",
    "ctray.tasks.findings.train_job:TrainFindingsConfig",
    "ctray.tasks.findings.train_job:run_train_findings",
    flags={"--model": "model", "--epochs": "training.epochs",
           "--num-workers": "scaling.num_workers", "--labels": "labels.path",
           "--label-source": "labels.source", "--lang": "lang"},
    resumable=False,  # resumes from its checkpoints, not row-wise
))
register(JobSpec(
    "label-findings",
    "label reports with the 18 CT-RATE findings: rules, an LLM (JSON) or the trained classifier",
    "ctray.tasks.findings.label_job:LabelFindingsConfig",
    "ctray.tasks.findings.label_job:run_label_findings",
    flags={"--labeler": "labeler", "--model-dir": "model.path", "--lang": "lang"},
))
register(JobSpec(
    "eval-findings",
    "per-finding metrics of findings predictions against gold labels, threshold search, "
    "A-minus-B delta table and F1 chart (markdown, CSV, PNG)",
    "ctray.tasks.findings.eval_job:FindingsEvalConfig",
    "ctray.tasks.findings.eval_job:run_findings_eval",
    flags={"--predictions": "predictions.path", "--compare-to": "compare_to.path",
           "--allow-partial": "allow_partial",
           "--gold": "gold.path"},
    needs_ray=False,
    aliases=("findings-eval",),
))
register(JobSpec(
    "bench-serve",
    "latency/throughput of the findings Serve app at several concurrencies, batching on and off",
    "ctray.tasks.findings.bench_job:ServeBenchConfig",
    "ctray.tasks.findings.bench_job:run_serve_bench",
    flags={"--checkpoint": "checkpoint", "--url": "url"},
    resumable=False,
    aliases=("serve-bench",),
))
register(JobSpec(
    "train-findings-labeler",
    "fine-tune a causal LM (LoRA or full) as a CT-RATE findings labeler on Ray Train; "
    "exports an HF folder vLLM and the hf backend load",
    "ctray.tasks.findings.train_labeler_job:TrainFindingsLabelerConfig",
    "ctray.tasks.findings.train_labeler_job:run_train_findings_labeler",
    flags={"--model": "model", "--labels": "labels.path",
           "--max-steps": "training.max_steps", "--num-workers": "scaling.num_workers"},
    resumable=False,  # resumes from its checkpoints, not row-wise
))
