"""Typed client of the denoiser service."""

from __future__ import annotations

from typing import Iterator

import grpc
import torch

from longcat.client.errors import from_rpc_error
from longcat.rpc.channel import make_channel
from longcat.rpc.codec import to_proto
from longcat.v1 import common_pb2, denoiser_pb2, denoiser_pb2_grpc


class DenoiserClient:
    def __init__(self, address: str, channel: grpc.Channel | None = None):
        self.channel = channel or make_channel(address)
        self.stub = denoiser_pb2_grpc.DenoiserStub(self.channel)

    def denoise(self, prompt_embeds: torch.Tensor, negative_embeds: torch.Tensor | None, image: bytes,
                width: int, height: int, steps: int, guidance_scale: float, seed: int,
                adapters: list[tuple[str, float]] = (), preview_every: int = 0, timeout: float | None = None,
                metadata=None) -> Iterator[denoiser_pb2.DenoiseEvent]:
        """Stream of DenoiseEvent (progress..., result). Closing the iterator cancels the call."""
        req = denoiser_pb2.DenoiseRequest(
            prompt_embeds=to_proto(prompt_embeds), image=image, width=width, height=height,
            num_inference_steps=steps, guidance_scale=guidance_scale, seed=seed, preview_every=preview_every,
            adapters=[common_pb2.AdapterRef(name=n, scale=s) for n, s in adapters])
        if negative_embeds is not None:
            req.negative_embeds.CopyFrom(to_proto(negative_embeds))
        call = self.stub.Denoise(req, timeout=timeout, metadata=metadata)
        try:
            yield from call
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
        finally:
            call.cancel()

    def close(self) -> None:
        self.channel.close()
