"""Where models live: the cache folder and the built-in tiny model's folder (torch-free path rules; building
and loading are :mod:`longcat.models.loading`'s)."""

from __future__ import annotations

import os
from pathlib import Path

TINY = "tiny"
TINY_TURBO = "tiny-turbo"  # the tiny Edit-Turbo variant (8 steps, no CFG by its folder's defaults)


def cache_dir() -> Path:
    return Path(os.environ.get("LONGCAT_CACHE", Path.home() / ".cache" / "longcat"))


def is_tiny(model: str) -> bool:
    """``tiny``, ``tiny:<seed>``, ``tiny-turbo`` or ``tiny-turbo:<seed>``: a built-in tiny model."""
    return model.split(":", 1)[0] in (TINY, TINY_TURBO)


def is_tiny_turbo(model: str) -> bool:
    return model.split(":", 1)[0] == TINY_TURBO


def tiny_seed(model: str) -> int:
    return int(model.split(":", 1)[1]) if ":" in model else 0


def tiny_dir(model: str = TINY) -> Path:
    """A tiny model name -> the folder it is built into (once)."""
    kind = "tiny-turbo" if is_tiny_turbo(model) else "tiny"
    return cache_dir() / f"{kind}-seed{tiny_seed(model)}"
