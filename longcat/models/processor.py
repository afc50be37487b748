"""An image-only stand-in for ``Qwen2VLProcessor``.

In transformers 5.x ``Qwen2VLProcessor`` insists on a video processor, which needs torchvision. The
LongCat edit pipeline only ever touches ``text_processor.image_processor`` (the tokenizer is its own
component), so we load the PIL image processor alone. This works for the real checkpoint's
``text_processor/`` folder and for the tiny model's, on machines with or without torchvision.
"""

from __future__ import annotations

import os

from transformers import Qwen2VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil


class ImageOnlyQwenProcessor(Qwen2VLProcessor):
    """The part of ``Qwen2VLProcessor`` that diffusers' LongCat pipelines use: its image processor.

    A subclass (not a duck type) because ``DiffusionPipeline.from_pretrained`` checks the class of a passed
    component; ``__init__`` deliberately skips the parent's, which would require a video processor.
    """

    def __init__(self, image_processor: Qwen2VLImageProcessorPil):  # noqa: D107 - see class docstring
        self.image_processor = image_processor
        self.tokenizer = None
        self.video_processor = None

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs) -> "ImageOnlyQwenProcessor":
        kwargs.pop("torch_dtype", None)
        return cls(Qwen2VLImageProcessorPil.from_pretrained(path, **kwargs))

    def save_pretrained(self, path: str | os.PathLike) -> None:
        self.image_processor.save_pretrained(path)

    def __repr__(self) -> str:
        return f"ImageOnlyQwenProcessor({self.image_processor.__class__.__name__})"
