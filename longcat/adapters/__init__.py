"""LoRA adapters for the LongCat transformer: file formats, the on-disk store, and the per-request manager."""

from longcat.adapters.formats import (
    OFFICIAL_TARGET_MODULES,
    LoraFile,
    read_lora,
    resolve_lora_files,
    save_lora,
    save_peft_format,
)
from longcat.adapters.manager import AdapterManager, parse_refs
from longcat.adapters.store import AdapterStore, validate_name

__all__ = [
    "OFFICIAL_TARGET_MODULES",
    "AdapterManager",
    "AdapterStore",
    "LoraFile",
    "parse_refs",
    "read_lora",
    "resolve_lora_files",
    "save_lora",
    "save_peft_format",
    "validate_name",
]
