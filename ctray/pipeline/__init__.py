"""Running stages over a corpus with resume, per-row errors and a manifest.

- ``stage``: ``Stage``, ``Resources``, ``RowError`` (one bad row, not a failed job).
- ``runner``: ``run_pipeline``, ``RunSpec``, ``RunSummary``.
- ``job``: ``run_corpus_job`` (a job config + stages → a finished run), ``run_spec``.
- ``chain``: ``run_pass``, ``write_chain_manifest`` (multi-pass jobs: one helper for all).
- ``ray_session``: ``init_ray``.
"""

from ctray._api import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "stage": ["Stage", "Resources", "RowError"],
    "runner": ["run_pipeline", "RunSpec", "RunSummary"],
    "job": ["run_corpus_job", "run_spec"],
    "chain": ["run_pass", "write_chain_manifest"],
    "ray_session": ["init_ray"],
})
