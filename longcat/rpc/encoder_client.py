"""Typed client of the encoder service, used by denoiser workers, the trainer and benchmarks."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import torch

from longcat.client.errors import from_rpc_error
from longcat.rpc.channel import make_channel
from longcat.rpc.codec import from_proto
from longcat.tracing import outgoing_metadata
from longcat.v1 import encoder_pb2, encoder_pb2_grpc


@dataclass
class Encoded:
    prompt_embeds: torch.Tensor
    negative_embeds: torch.Tensor | None
    width: int
    height: int
    cache_hit: bool
    model_fingerprint: str


class EncoderClient:
    def __init__(self, address: str, channel: grpc.Channel | None = None, timeout: float | None = 300.0):
        # The encoder is stateless: spread calls over every replica the name resolves to.
        self.channel = channel or make_channel(address, balanced=True)
        self.stub = encoder_pb2_grpc.EncoderStub(self.channel)
        self.timeout = timeout

    def encode(self, prompt: str, image: bytes, width: int = 0, height: int = 0, negative_prompt: str = "",
               with_negative: bool = True, truncate_prompt: bool = False, timeout: float | None = None,
               metadata=None, prompt_view: bool = False) -> Encoded:
        req = encoder_pb2.EncodePromptRequest(prompt=prompt, negative_prompt=negative_prompt, image=image,
                                              width=width, height=height, with_negative=with_negative,
                                              truncate_prompt=truncate_prompt, prompt_view=prompt_view)
        try:
            # wait_for_ready: a restarting encoder (or one still reconnecting) is waited for within the
            # timeout instead of failing the call at once.
            # outgoing_metadata: the job id, tenant and trace context of this thread travel with the call
            resp = self.stub.EncodePrompt(req, timeout=timeout or self.timeout, metadata=outgoing_metadata(metadata),
                                          wait_for_ready=True)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
        return Encoded(
            prompt_embeds=from_proto(resp.prompt_embeds, "prompt_embeds"),
            negative_embeds=from_proto(resp.negative_embeds, "negative_embeds", required=False),
            width=resp.width, height=resp.height, cache_hit=resp.cache_hit,
            model_fingerprint=resp.model_fingerprint,
        )

    def close(self) -> None:
        self.channel.close()
