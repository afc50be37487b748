"""Where models live: the cache folder and the built-in tiny model's folder (torch-free path rules; building
and loading are :mod:`longcat.models.loading`'s)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from longcat.errors import InvalidArgument

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


# A hub repo id as the Hub accepts it: "<owner>/<name>", letters, digits, "-", "_", "." (no "--" / "..", not
# starting or ending with "-" or "."), each part at most 96 characters.
_HUB_PART = re.compile(r"^(?!.*(--|\.\.))[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$")


def check_model_reference(model: str, field: str) -> None:
    """Refuse, before any job exists, a model that no trainer could load: ``tiny`` / ``tiny:<seed>`` (and the
    turbo variants), a local diffusers model folder (``model_index.json`` in it), or a well-formed hub id.
    Torch-free and cheap: the gateway calls it at submission, the trainer again before it loads anything
    (so such a job fails at once instead of being retried)."""
    if not isinstance(model, str) or not model or "\x00" in model:
        raise InvalidArgument("must name a model: tiny, a diffusers model folder, or a hub id", field)
    shown = model if len(model) <= 200 else model[:200] + "..."
    if is_tiny(model):
        seed = model.split(":", 1)[1] if ":" in model else "0"
        if not (seed.isascii() and seed.isdigit()) or len(seed) > 18:
            raise InvalidArgument(f"{shown!r}: a tiny model's seed must be a non-negative integer (tiny:<seed>)",
                                  field)
        return
    path = Path(os.path.expanduser(model))
    looks_local = model.startswith(("/", ".", "~")) or model.count("/") > 1 or "\\" in model or path.exists()
    if looks_local or path.is_dir():
        if not path.exists():
            raise InvalidArgument(f"{shown!r} does not exist (a local model must be a diffusers model folder)",
                                  field)
        if not path.is_dir() or not (path / "model_index.json").is_file():
            raise InvalidArgument(f"{shown!r} is not a diffusers model folder (no model_index.json in it)", field)
        return
    parts = model.split("/")
    if len(parts) != 2 or not all(_HUB_PART.match(p) for p in parts):
        raise InvalidArgument(f"{shown!r} is neither tiny, an existing diffusers model folder, nor a hub id "
                              "like 'meituan-longcat/LongCat-Image-Edit'", field)
