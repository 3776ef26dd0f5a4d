"""Backend lookup by configuration type.

Each :class:`~ctray.llm.config.BackendConfig` subclass (one per ``kind``, registered
when it is defined) builds its own backend; heavy modules (vllm, transformers)
import only when chosen, inside the worker that builds the backend.
"""

from __future__ import annotations

from ctray.llm.base import LLMBackend
from ctray.llm.config import BACKEND_CONFIGS, BackendConfig

KNOWN_BACKENDS = tuple(sorted(BACKEND_CONFIGS))


def make_backend(cfg: BackendConfig) -> LLMBackend:
    return cfg.make_backend()
