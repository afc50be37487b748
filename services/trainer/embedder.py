"""Training embeddings from the encoder service, the same conditioning code as in-process, over gRPC."""

from __future__ import annotations

import torch
from PIL import Image

from longcat.images import encode_png
from longcat.rpc.encoder_client import EncoderClient


class EncoderServiceEmbedder:
    """The trainer's :class:`longcat.training.Embedder` backed by ``longcat.v1.Encoder``.

    The trainer hands over the VLM's view of the bucket-sized reference; it travels as lossless PNG with
    ``prompt_view`` set, so the service embeds exactly the pixels the in-process path would.
    """

    def __init__(self, address: str, model_fingerprint: str, timeout: float = 600.0):
        self.client = EncoderClient(address, timeout=timeout)
        self.fingerprint = f"encoder-service:{model_fingerprint}"

    def embed(self, prompt: str, prompt_image: Image.Image, key: str) -> torch.Tensor:
        width, height = prompt_image.width * 2, prompt_image.height * 2
        out = self.client.encode(prompt, encode_png(prompt_image), width, height, with_negative=False,
                                 prompt_view=True, metadata=[("x-request-id", key[:32])])
        return out.prompt_embeds
