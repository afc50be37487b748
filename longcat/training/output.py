"""What a finished run leaves behind, and publishing it into the adapter store by name."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from longcat.adapters import AdapterStore, save_lora, validate_name
from longcat.adapters.formats import DIFFUSERS_WEIGHTS
from longcat.errors import InvalidArgument, NotFound
from longcat.training.lora import ADAPTER_NAME

SUMMARY_FILE = "training_summary.json"


def adapter_file(output_dir: str | os.PathLike) -> Path | None:
    path = Path(output_dir) / DIFFUSERS_WEIGHTS
    return path if path.is_file() else None


def write_adapter(transformer, output_dir: str | os.PathLike, rank: int, alpha: float) -> Path:
    """``<output_dir>/pytorch_lora_weights.safetensors``: diffusers format, ``transformer.`` keys, rank/alpha;
    byte-identical for identical weights."""
    return save_lora(transformer, ADAPTER_NAME, output_dir, rank=rank, alpha=alpha)


def write_summary(output_dir: str | os.PathLike, summary: dict[str, Any]) -> Path:
    path = Path(output_dir) / SUMMARY_FILE
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def publish(output_dir: str | os.PathLike, store: AdapterStore, name: str, overwrite: bool = False) -> Path:
    """Copy a run's adapter (and summary) into ``store`` as ``name``; returns the adapter's folder.

    Readers never see a partial adapter (the storage swaps whole adapters); an existing one
    (``overwrite=True``) is replaced, which the denoisers' adapter manager picks up on its next use of the name.
    """
    validate_name(name, "name")
    weights = adapter_file(output_dir)
    if weights is None:
        raise NotFound(f"{str(output_dir)!r} holds no {DIFFUSERS_WEIGHTS}; has training finished?", "output_dir")
    files = [weights] + [p for p in [Path(output_dir) / SUMMARY_FILE] if p.is_file()]
    if not overwrite and store.exists(name):
        raise InvalidArgument(f"an adapter named {name!r} already exists", "name")
    store.put(name, files)  # the storage interface: readers see the old adapter or the new one, never a mix
    return store.path_for(name, "name")
