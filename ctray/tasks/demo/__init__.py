"""The demo job: read → text statistics → an LLM yes/no question → Parquet + manifest,
on the bundled sample reports. Job: ``demo`` (``demo_job``), registered in ``jobs``."""

from ctray._api import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "demo_job": ["DemoConfig", "run_demo", "FindingQuestion"],
})
