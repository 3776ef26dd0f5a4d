"""The 18 CT-RATE findings: schema, rule / LLM / BERT labelers, training and evaluation.

Jobs (registered in ``jobs``): ``label-findings`` (``label_job``), ``train-findings``
(``train_job``, Ray Train), ``eval-findings`` (``eval_job``).
Library: ``schema`` (finding order, CT-RATE's label columns), ``rules`` (regex mentions with
sentence / clause-scoped negation, EN and JA), ``llm_tasks`` (the JSON-answer LLM task),
``model`` (the windowed BERT classifier), ``evaluation`` (the per-finding table CT-BERT-JPN
reports), ``make_sample`` (writes the bundled synthetic sample corpus).
"""

from ctray._api import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "schema": ["FINDING_COLUMNS", "FINDINGS", "to_columns"],
    "rules": ["RuleLabeler"],
    "llm_tasks": ["FindingsLLMTask", "parse_labels"],
    "evaluation": ["evaluate_findings", "search_thresholds"],
    "label_job": ["LabelFindingsConfig", "run_label_findings"],
    "train_job": ["TrainFindingsConfig", "run_train_findings"],
    "eval_job": ["FindingsEvalConfig", "run_findings_eval"],
})
