"""Our edit engine: validated request -> encode -> denoise loop -> decode, with callbacks and adapters.

Names resolve lazily (PEP 562), so importing a torch-free module under ``longcat.engine`` never loads torch.
"""

import importlib

_EXPORTS = {
    "DenoiseJob": "longcat.engine.denoise", "DenoiseLoop": "longcat.engine.denoise",
    "StepEvent": "longcat.engine.denoise", "EditEngine": "longcat.engine.engine",
    "EditResult": "longcat.engine.engine", "PromptEmbeddings": "longcat.engine.engine",
    "AdapterRef": "longcat.api.edit", "EditRequest": "longcat.api.edit", "Limits": "longcat.api.edit",
    "ValidatedRequest": "longcat.api.edit", "validate_request": "longcat.api.edit",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
