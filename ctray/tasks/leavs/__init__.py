"""LEAVS: organ x finding-type certainty and urgency labels for abdominal CT reports.

Jobs (registered in ``jobs``): ``label-leavs`` (``leavs_job``: one chained Ray Data pass per
question stage, then the assembly), ``eval-leavs`` (``eval_job``: the paper's Tables 1, 2, 4,
5). Library: ``schema``, ``prompts``, ``tasks`` (the question stages), ``parsing``, ``fanout``
(rows between passes), ``assemble`` (per-organ labels and the release CSV), ``evaluation``.
"""

from ctray._api import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "schema": ["ORGANS"],
    "stages": ["question_stage"],
    "evaluation": ["evaluate_leavs"],
    "leavs_job": ["LeavsConfig", "run_leavs"],
    "eval_job": ["LeavsEvalConfig", "run_leavs_eval"],
})
