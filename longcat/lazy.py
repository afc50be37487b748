"""Lazy package exports (PEP 562): a package names what it offers without importing it, so importing one
torch-free module under a package never loads the package's torch-heavy siblings."""

from __future__ import annotations

import importlib
from typing import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], object], list[str]]:
    """``exports``: name -> module that defines it. Returns the package's ``__getattr__`` and ``__all__``."""

    def __getattr__(name: str):
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__, list(exports)
