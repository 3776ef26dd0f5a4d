"""Text-prompted grounding of chest CT findings (ReXGroundingCT-style).

Jobs (registered in ``jobs``): ``ground-text`` (``text_job``: rewrite, finding extraction and
categorisation as three chained passes), ``segment`` (``segment_job``: one mask per finding
sentence), ``train-grounding`` (``train_job``, Ray Train), ``eval-grounding`` (``eval_job``: Dice,
HIT rates, bootstrap CIs).
Text half: ``prompts``, ``llm_tasks``, ``text_checks``, ``categories`` (the 12 / 61-code
schema). Imaging half: ``preprocess`` (HU → window [-600, 1500] → [0, 1]), ``phantoms``
(synthetic chests with text-described findings), ``model`` (a FiLM text-conditioned 3D U-Net),
``inference`` (sliding windows, masks back on the scan's grid). Metrics live in
``ctray.metrics.segmentation``, volume I/O in ``ctray.io.volumes``.
"""

from ctray._api import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "categories": ["load_categories"],
    "text_job": ["GroundTextConfig", "run_ground_text"],
    "segment_job": ["SegmentConfig", "run_segment"],
    "train_job": ["TrainGroundingConfig", "run_train_grounding"],
    "eval_job": ["GroundEvalConfig", "run_ground_eval"],
})
