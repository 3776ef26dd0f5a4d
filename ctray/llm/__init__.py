"""LLM access for every job: one backend interface, tasks and the stage that runs them.

- ``base``: ``LLMBackend`` (``generate(list[LLMRequest]) -> list[LLMResponse]``, never raising
  for one request), ``LLMRequest``, ``LLMResponse``.
- ``task``: ``LLMTask`` (``build_request`` / ``parse`` / optional repair) and ``LLMStage``.
- ``config``: ``BackendConfig``, one config class per backend kind (``fake``, ``hf``,
  ``openai``, ``vllm``); ``registry.make_backend``.
- ``prompts``: ``PromptTemplate`` (named, versioned prompts recorded in manifests).
"""
