"""Per-report text statistics: the ``stats-text`` job (``stats_job``, registered in
``jobs``); its stage is ``ctray.pipeline.text_stats.TextStatsStage`` (also used by ``demo``)."""

from ctray._api import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "stats_job": ["TextStatsConfig", "run_text_stats"],
})
