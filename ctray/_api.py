"""Package public APIs that cost nothing to import.

A package's ``__init__`` names its public API (``from ctray.pipeline import run_pass``
works), but importing the package must not import pandas, Ray or torch, nor create
import cycles between layers: the names resolve from their submodules on first use
(PEP 562 module ``__getattr__``).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, api: dict[str, list[str]]
                 ) -> tuple[list[str], Callable[[str], Any]]:
    """(``__all__``, ``__getattr__``) for ``package``: ``api`` maps a submodule name to
    the public names it defines."""
    where = {name: f"{package}.{module}" for module, names in api.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(where[name]), name)

    return sorted(where), __getattr__
