"""Reading and writing: corpora in, worker-written Parquet and manifests out.

- ``corpus``: ``CorpusConfig``, ``read_corpus`` (CSV / JSONL / Parquet / .txt folders, local or
  object store, stable ``report_id``), ``find_duplicate_ids``.
- ``output``: ``OutputLayout`` (``results/``, ``errors/``, ``manifest.json``), ``write_shard``,
  ``read_output_table``, ``resolve_fs``.
- ``manifest``: ``job_manifest`` / ``write_job_manifest`` (the one manifest helper),
  ``library_versions``, ``config_hash``, ``scrub_secrets``.
- ``volumes``: NIfTI listing, loading and mask saving.
- ``columns``: bookkeeping column names and ``LIGHT_TASK`` shared by every layer.
"""

from ctray._api import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "corpus": ["CorpusConfig", "read_corpus", "find_duplicate_ids"],
    "output": ["OutputLayout", "write_shard", "read_output_table", "resolve_fs"],
    "manifest": ["job_manifest", "write_job_manifest", "library_versions", "config_hash", "scrub_secrets"],
    "volumes": ["list_volumes", "load_volume", "save_mask"],
    "columns": ["LIGHT_TASK"],
})
