"""Names and file conventions clients and services agree on: adapter/dataset/owner names, LoRA file names,
the modules the official LoRA recipe trains. Pure data; the adapter code (torch) reads them from here."""

from __future__ import annotations

import re

from longcat.errors import InvalidArgument

# One path component, no hidden files, no ``..``: a request-supplied name can never leave ``root``.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

# The modules the official LongCat-Image-Edit LoRA recipe trains (suffixes, PEFT ``target_modules`` style).
OFFICIAL_TARGET_MODULES = [
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "ff.net.0.proj",
    "ff.net.2",
    "ff_context.net.0.proj",
    "ff_context.net.2",
]

DIFFUSERS_WEIGHTS = "pytorch_lora_weights.safetensors"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"


def validate_name(name: object, field: str = "adapters.name") -> str:
    if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name:
        raise InvalidArgument(
            f"adapter name {name!r} is invalid: use 1-64 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit, and no '..'", field)
    return name
