"""Our edit engine: validated request -> encode -> denoise loop -> decode, with callbacks and adapters.

Names resolve lazily (PEP 562), so importing a torch-free module under ``longcat.engine`` never loads torch.
"""

from longcat.lazy import lazy_exports

_EXPORTS = {
    "DenoiseJob": "longcat.engine.denoise", "DenoiseLoop": "longcat.engine.denoise",
    "StepEvent": "longcat.engine.denoise", "EditEngine": "longcat.engine.engine",
    "EditResult": "longcat.engine.engine", "PromptEmbeddings": "longcat.engine.engine",
    "AdapterRef": "longcat.api.edit", "EditRequest": "longcat.api.edit", "Limits": "longcat.api.edit",
    "ValidatedRequest": "longcat.api.edit", "validate_request": "longcat.api.edit",
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
