"""The tensor codec is exact for every dtype and refuses malformed payloads naming the field."""

from __future__ import annotations

import pytest
import torch

from longcat.codec import tensor_from_bytes, tensor_to_bytes
from longcat.errors import InvalidArgument


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64,
                                   torch.int32, torch.uint8])
def test_round_trip_is_bit_exact(dtype):
    t = (torch.randn(2, 3, 5) * 100).to(dtype)
    name, shape, data = tensor_to_bytes(t)
    back = tensor_from_bytes(name, shape, data)
    assert back.dtype == dtype and back.shape == t.shape
    assert torch.equal(back, t)


def test_non_contiguous_and_special_values():
    t = torch.tensor([[float("nan"), float("inf")], [-0.0, 1e-45]]).T
    back = tensor_from_bytes(*tensor_to_bytes(t))
    assert torch.equal(back.view(torch.int32), t.contiguous().view(torch.int32))


@pytest.mark.parametrize("dtype,shape,nbytes,field", [
    ("float32", [2, 2], 15, "emb.data"),
    ("complex64", [1], 8, "emb.dtype"),
    ("float32", [-1, 4], 16, "emb.shape"),
])
def test_malformed_payloads(dtype, shape, nbytes, field):
    with pytest.raises(InvalidArgument) as err:
        tensor_from_bytes(dtype, shape, b"\0" * nbytes, field="emb")
    assert err.value.field == field


def test_unsendable_dtype():
    with pytest.raises(InvalidArgument, match="cannot be sent"):
        tensor_to_bytes(torch.zeros(2, dtype=torch.complex64))
