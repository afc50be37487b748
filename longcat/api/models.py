"""Where models live: the cache folder and the built-in tiny model's folder (torch-free path rules; building
and loading are :mod:`longcat.models.loading`'s)."""

from __future__ import annotations

import os
from pathlib import Path

TINY = "tiny"


def cache_dir() -> Path:
    return Path(os.environ.get("LONGCAT_CACHE", Path.home() / ".cache" / "longcat"))


def tiny_seed(model: str) -> int:
    return int(model.split(":", 1)[1]) if ":" in model else 0


def tiny_dir(model: str = TINY) -> Path:
    """``tiny`` / ``tiny:<seed>`` -> the folder the tiny model is built into (once)."""
    return cache_dir() / f"tiny-seed{tiny_seed(model)}"
