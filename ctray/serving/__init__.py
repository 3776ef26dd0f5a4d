"""The Serve framework under every task's app (see docs/serving.md).

``service``: the ``Service`` base (the /label, /healthz, /version and /stats routes,
written once by ``ingress``), request limits, the app builders' helpers; ``llm_service``:
the base of the apps that answer with an LLM; ``batching``: per-item error isolation and
counters; ``auth``: the bearer token; ``proxy``: the proxy's JSON 503/408 middleware;
``schemas``: the HTTP bodies of the shipped apps; ``client``: a Python client. The apps
themselves live in ``ctray/tasks/<x>/serve.py``.
"""

from ctray._api import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "client": ["LabelingClient", "LabelingError"],
    "service": ["Service", "ingress", "service_api"],
})
