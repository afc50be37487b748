"""Tensors across the wire: (dtype name, shape, raw little-endian bytes), exact for every dtype we use.

Pure functions with no gRPC dependency; the services wrap them in the ``longcat.v1.Tensor`` message.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from longcat.errors import InvalidArgument

# dtype name on the wire -> (torch dtype, same-width numpy dtype used to move the bits)
_DTYPES: dict[str, tuple[torch.dtype, np.dtype]] = {
    "float32": (torch.float32, np.dtype("<f4")),
    "float16": (torch.float16, np.dtype("<f2")),
    "bfloat16": (torch.bfloat16, np.dtype("<u2")),  # numpy has no bf16: ship the 16 bits untouched
    "float64": (torch.float64, np.dtype("<f8")),
    "int64": (torch.int64, np.dtype("<i8")),
    "int32": (torch.int32, np.dtype("<i4")),
    "uint8": (torch.uint8, np.dtype("u1")),
}
_NAMES = {torch_dtype: name for name, (torch_dtype, _) in _DTYPES.items()}
MAX_TENSOR_BYTES = 1 << 31


def dtype_name(dtype: torch.dtype) -> str:
    try:
        return _NAMES[dtype]
    except KeyError:
        raise InvalidArgument(f"dtype {dtype} cannot be sent; use one of {', '.join(_DTYPES)}", "dtype") from None


def tensor_to_bytes(t: torch.Tensor) -> tuple[str, list[int], bytes]:
    """(dtype name, shape, bytes) of ``t`` (moved to CPU, made contiguous)."""
    name = dtype_name(t.dtype)
    t = t.detach().to("cpu").contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.uint16)
    arr = t.numpy()
    if sys.byteorder != "little":  # pragma: no cover - every machine we run on is little-endian
        arr = arr.byteswap()
    return name, list(t.shape), arr.tobytes()


def tensor_from_bytes(dtype: str, shape: list[int] | tuple[int, ...], data: bytes, field: str = "tensor",
                      device: torch.device | str | None = None) -> torch.Tensor:
    """Inverse of :func:`tensor_to_bytes`; checks dtype, shape and size, naming ``field`` when they are off."""
    if dtype not in _DTYPES:
        raise InvalidArgument(f"unknown dtype {dtype!r}; expected one of {', '.join(_DTYPES)}", f"{field}.dtype")
    if any(int(d) < 0 for d in shape):
        raise InvalidArgument(f"negative dimension in shape {list(shape)}", f"{field}.shape")
    torch_dtype, np_dtype = _DTYPES[dtype]
    expected = int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize
    if expected != len(data) or expected > MAX_TENSOR_BYTES:
        raise InvalidArgument(f"shape {list(shape)} of {dtype} needs {expected} bytes, got {len(data)}",
                              f"{field}.data")
    arr = np.frombuffer(data, dtype=np_dtype).reshape(tuple(int(d) for d in shape)).copy()
    t = torch.from_numpy(arr)
    if torch_dtype == torch.bfloat16:
        t = t.view(torch.bfloat16)
    return t.to(device) if device is not None else t
