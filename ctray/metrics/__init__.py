"""Metrics shared by the evaluation jobs (no task knowledge).

- ``classification``: ``binary_metrics``, ``kendall_tau_b``.
- ``translation``: ``corpus_bleu``, ``sentence_bleu``, ``PairScorer`` (BLEU / ROUGE on MeCab tokens).
- ``segmentation``: ``dice_score``, ``hit_rate``, ``grounding_table``.
- ``bootstrap``: ``bootstrap_ci``, ``paired_bootstrap_test``, ``percentile_ci``.
"""

from ctray._api import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "classification": ["binary_metrics", "kendall_tau_b"],
    "translation": ["corpus_bleu", "sentence_bleu", "PairScorer"],
    "segmentation": ["dice_score", "hit_rate", "grounding_table"],
    "bootstrap": ["bootstrap_ci", "paired_bootstrap_test", "percentile_ci"],
})
