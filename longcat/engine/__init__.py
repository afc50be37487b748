"""Our edit engine: validated request -> encode -> denoise loop -> decode, with callbacks and adapters."""

from longcat.engine.denoise import DenoiseJob, DenoiseLoop, StepEvent
from longcat.engine.engine import EditEngine, EditResult, PromptEmbeddings
from longcat.engine.request import AdapterRef, EditRequest, Limits, ValidatedRequest, validate_request

__all__ = ["DenoiseJob", "DenoiseLoop", "StepEvent", "EditEngine", "EditResult", "PromptEmbeddings",
           "AdapterRef", "EditRequest", "Limits", "ValidatedRequest", "validate_request"]
