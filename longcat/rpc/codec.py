"""``longcat.v1.Tensor`` <-> torch, on top of the shared byte codec."""

from __future__ import annotations

import torch

from longcat.codec import tensor_from_bytes, tensor_to_bytes
from longcat.errors import InvalidArgument
from longcat.v1 import common_pb2


def to_proto(t: torch.Tensor) -> common_pb2.Tensor:
    dtype, shape, data = tensor_to_bytes(t)
    return common_pb2.Tensor(dtype=dtype, shape=shape, data=data)


def from_proto(msg: common_pb2.Tensor, field: str, device=None, required: bool = True) -> torch.Tensor | None:
    if not msg.dtype and not msg.data and not msg.shape:
        if required:
            raise InvalidArgument("is required", field)
        return None
    return tensor_from_bytes(msg.dtype, list(msg.shape), msg.data, field=field, device=device)
