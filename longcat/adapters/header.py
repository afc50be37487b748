"""Describe a stored LoRA (format, rank, alpha) from its safetensors header and config alone: no tensors are
read and no torch is imported, so the gateway's registry can describe adapters. The full check of a file is
:func:`longcat.adapters.formats.read_lora` (where the weights are loaded)."""

from __future__ import annotations

import collections
import json
import struct
from dataclasses import dataclass

from longcat.api.names import DIFFUSERS_WEIGHTS, PEFT_CONFIG, PEFT_WEIGHTS
from longcat.errors import InvalidArgument

PEFT_PREFIX = "base_model.model."
DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"
MAX_HEADER = 100 << 20


@dataclass(frozen=True)
class LoraSummary:
    format: str
    rank: int
    alpha: float


def describe(storage, name: str, field: str = "adapters") -> LoraSummary:
    stored = storage.get(name, field)
    weights = DIFFUSERS_WEIGHTS if DIFFUSERS_WEIGHTS in stored.files else PEFT_WEIGHTS
    with storage.open(name, weights) as f:
        try:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > MAX_HEADER:
                raise ValueError("header too large")
            header = json.loads(f.read(n))
        except (struct.error, ValueError) as exc:
            raise InvalidArgument(f"adapter {name!r}: {weights} is not a readable safetensors file", field) from exc
    meta = header.pop("__metadata__", None) or {}
    ranks = [v["shape"][0] for k, v in header.items() if k.endswith(".lora_A.weight") and v.get("shape")]
    if not ranks:
        raise InvalidArgument(f"adapter {name!r}: {weights} holds no LoRA tensors", field)
    rank = collections.Counter(ranks).most_common(1)[0][0]
    fmt = "peft" if weights == PEFT_WEIGHTS or any(k.startswith(PEFT_PREFIX) for k in header) else "diffusers"
    alpha = meta.get("lora_alpha")  # ours, written by save_lora
    if alpha is None and fmt == "peft" and PEFT_CONFIG in stored.files:
        with storage.open(name, PEFT_CONFIG) as f:
            alpha = _json(f.read()).get("lora_alpha")
    if alpha is None and DIFFUSERS_METADATA_KEY in meta:
        alpha = _json(meta[DIFFUSERS_METADATA_KEY]).get("lora_alpha")
    try:
        return LoraSummary(fmt, int(rank), float(rank if alpha is None else alpha))
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"adapter {name!r}: lora_alpha {alpha!r} is not a number", field) from exc


def _json(raw) -> dict:
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
