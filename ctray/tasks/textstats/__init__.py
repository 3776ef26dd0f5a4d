"""Per-report text statistics: ``TextStatsStage`` (``stage``; also used by ``demo``) and
the ``text-stats`` job (``stats_job``), registered in ``jobs``."""

from ctray._api import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "stage": ["TextStatsStage", "STAT_KEYS"],
    "stats_job": ["TextStatsConfig", "run_text_stats"],
})
