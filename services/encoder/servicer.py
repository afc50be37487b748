"""``longcat.v1.Encoder``: (prompt, negative prompt, reference image, size) -> embeddings, cached."""

from __future__ import annotations

import hashlib
import threading

import torch

from longcat.api.edit import Limits, check_prompt, resolve_geometry, resolve_image
from longcat.conditioning import PromptEncoder, reference_prompt_image
from longcat.errors import InvalidArgument, Unavailable
from longcat.images import image_content_hash
from longcat.rpc.codec import to_proto
from longcat.rpc.handler import rpc_method
from longcat.v1 import encoder_pb2, encoder_pb2_grpc
from services.encoder.cache import EmbeddingCache

SERVICE = "longcat.v1.Encoder"


class EncoderBackend:
    """The loaded model side: one forward at a time (bounded memory), results cached by content."""

    def __init__(self, encoder: PromptEncoder, fingerprint: str, limits: Limits, cache: EmbeddingCache):
        self.encoder = encoder
        self.fingerprint = fingerprint
        self.limits = limits
        self.cache = cache
        self._lock = threading.Lock()

    def embed(self, text: str, field: str, prompt_image, image_hash: str, size: tuple[int, ...],
              truncate: bool) -> tuple[torch.Tensor, bool]:
        key = hashlib.sha256("\x1f".join(
            [self.fingerprint, image_hash, "x".join(map(str, size)), str(int(truncate)), text]).encode()).hexdigest()

        def compute():
            with self._lock, torch.no_grad():
                return self.encoder.encode(text, prompt_image, field=field, truncate=truncate).cpu()

        return self.cache.get_or_compute(key, compute)


class EncoderServicer(encoder_pb2_grpc.EncoderServicer):
    def __init__(self):
        self.backend: EncoderBackend | None = None  # set once the model is loaded

    def _ready(self, context) -> EncoderBackend:
        if self.backend is None:
            raise Unavailable("the encoder is still loading its model")
        return self.backend

    @rpc_method(SERVICE)
    def EncodePrompt(self, request: encoder_pb2.EncodePromptRequest, context):
        backend = self._ready(context)
        # Internal API: an empty prompt is legitimate here (training's caption dropout embeds "").
        prompt = check_prompt(request.prompt, required=False)
        negative = check_prompt(request.negative_prompt, "negative_prompt", required=False)
        image = resolve_image(request.image, backend.limits)
        geometry = resolve_geometry(request.width, request.height, image.size, backend.limits)
        if request.prompt_view:
            want = (geometry.width // 2, geometry.height // 2)
            if image.size != want:
                raise InvalidArgument(f"a prompt view must be half the output size {want}, got {image.size}",
                                      "image")
            prompt_image = image
        else:
            prompt_image = reference_prompt_image(image, geometry)
        size = (geometry.width, geometry.height, int(request.prompt_view))
        image_hash = image_content_hash(request.image)
        embeds, hit = backend.embed(prompt, "prompt", prompt_image, image_hash, size, request.truncate_prompt)
        response = encoder_pb2.EncodePromptResponse(prompt_embeds=to_proto(embeds), width=geometry.width,
                                                    height=geometry.height, model_fingerprint=backend.fingerprint)
        if request.with_negative:
            neg, neg_hit = backend.embed(negative, "negative_prompt", prompt_image, image_hash, size,
                                         request.truncate_prompt)
            response.negative_embeds.CopyFrom(to_proto(neg))
            hit = hit and neg_hit
        response.cache_hit = hit
        return response
