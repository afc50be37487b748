"""LoRA adapters for the LongCat transformer: file formats, the on-disk store, and the per-request manager.

Names resolve lazily (PEP 562): the registry and the store never load torch; the formats and manager do.
"""

from longcat.lazy import lazy_exports

_EXPORTS = {
    "OFFICIAL_TARGET_MODULES": "longcat.api.names", "validate_name": "longcat.api.names",
    "LoraFile": "longcat.adapters.formats", "read_lora": "longcat.adapters.formats",
    "resolve_lora_files": "longcat.adapters.formats", "save_lora": "longcat.adapters.formats",
    "save_peft_format": "longcat.adapters.formats", "AdapterManager": "longcat.adapters.manager",
    "parse_refs": "longcat.adapters.manager", "AdapterStore": "longcat.adapters.store",
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
