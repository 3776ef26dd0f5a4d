"""Online labeling with Ray Serve (see docs/serving.md).

``apps`` holds the typed app builders that ``serve/*.yaml`` import; ``deployments`` and
``llm_deployments`` the FastAPI-ingress deployments; ``client`` a Python client;
``bench`` the ``ctray serve-bench`` load generator.
"""
