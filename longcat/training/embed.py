"""Where prompt embeddings come from during training: the :class:`Embedder` seam.

The trainer only needs ``embed(prompt, prompt_image, key) -> (L, D) tensor``. In-process, that is
:class:`longcat.conditioning.PromptEncoder` on the loaded Qwen2.5-VL (the same code the encoder service runs).
With ``embeddings_source: "encoder_service"`` a gRPC client to the encoder service implements the same
protocol (added with the service wiring): pass it as ``Trainer(..., embedder=...)``; ``key`` is our cache key,
which the service may use for its own cache.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from PIL import Image

from longcat.conditioning import PromptEncoder
from longcat.errors import InvalidArgument


@runtime_checkable
class Embedder(Protocol):
    #: Identity of the encoder weights and precision; part of every text-embedding cache key, so embeddings
    #: from another model (or a quantized encoder) are never mixed into a cache.
    fingerprint: str

    def embed(self, prompt: str, prompt_image: Image.Image, key: str) -> torch.Tensor:
        """Embeddings of ``prompt`` seen with ``prompt_image`` (the half-size reference): (1, L, D) or (L, D)."""
        ...


class InProcessEmbedder:
    """Qwen2.5-VL loaded in this process (``Components`` with text_encoder, tokenizer, text_processor)."""

    def __init__(self, components):
        self.encoder = PromptEncoder(components.tokenizer, components.text_processor.image_processor,
                                     components.text_encoder)
        self.fingerprint = f"{components.fingerprint}:{components.precision.name}"

    def embed(self, prompt: str, prompt_image: Image.Image, key: str) -> torch.Tensor:
        return self.encoder.encode(prompt, prompt_image, field="caption")


def make_embedder(config, components) -> Embedder:
    """The embedder ``config.embeddings_source`` asks for."""
    if config.embeddings_source == "in_process":
        return InProcessEmbedder(components)
    # The gRPC client lands with the encoder-service wiring; until then the caller must pass one in.
    raise InvalidArgument(
        f"embeddings_source \"encoder_service\" ({config.encoder_address}) needs an encoder-service Embedder "
        "passed to the trainer; this build only embeds in-process", "embeddings_source")
