"""Online labeling with Ray Serve (see docs/serving.md).

``apps`` holds the typed app builders that ``serve/*.yaml`` import; ``deployments`` and
``llm_deployments`` the FastAPI-ingress deployments; ``client`` a Python client;
``bench_job`` the ``ctray serve-bench`` load generator (registered in ``jobs``).
"""

from ctray._api import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "client": ["LabelingClient", "LabelingError"],
    "bench_job": ["ServeBenchConfig", "run_serve_bench"],
})
