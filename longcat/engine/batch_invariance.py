"""Batch-invariant linears: a row's result never depends on how many rows share its GEMM, nor where it sits.

On CPU (fp32, torch's MKL GEMM) ``F.linear`` computes some rows with another kernel that rounds differently in
the last bits: every row when the input has 1-3 rows, and the last ``M % 4`` rows of a small ``M`` split
between threads (M = 5-7, 9-11 with 2 threads; up to 27 with 16). With the rows a multiple of 4, each row's
result is bitwise the same whatever the row count, its position and the thread count (measured: M = 1..129
and up to 601, 1-16 threads; and end to end by tests/test_step_scheduler.py). Attention and the per-row ops (norms,
activations) are batch-invariant here. So the linears fed one row per sample (timestep embedder,
AdaLayerNorm modulations, ``norm_out``, the LoRA A/B on those) made a job's numerics depend on its
batchmates: a job alone ran them on 1 (2 with CFG) rows, in a batch on 5 or 8. While
:func:`batch_invariant` is active, a linear whose rows are not a multiple of ``ROW_MULTIPLE`` runs on its rows
zero-padded up to one and sliced back, so a job gives the same latents and PNG alone and in any batch.

What it does not cover: GPU kernels (cuBLAS picks algorithms, split-K and tile shapes by problem size, and
flash/efficient attention is not batch-invariant in general), other CPUs or BLAS builds with other kernel
switches, and bf16/fp16. The mode is a thread-local ``TorchFunctionMode``: it touches only the thread that
entered it.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

ROW_MULTIPLE = 4  # GEMM rows in multiples of this take the batch-invariant path (measured on CPU, see above)


class _PadSmallLinears(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x = args[0] if args else kwargs["input"]
            if x.dim() >= 1 and x.shape[-1] > 0:
                rows = x.numel() // x.shape[-1]
                pad = -rows % ROW_MULTIPLE
                if rows and pad:
                    flat = x.reshape(rows, x.shape[-1])
                    padded = torch.cat([flat, flat.new_zeros(pad, x.shape[-1])])
                    rest = args[1:] if args else ()
                    kw = {k: v for k, v in kwargs.items() if k != "input"}
                    out = func(padded, *rest, **kw)[:rows]
                    return out.reshape(*x.shape[:-1], out.shape[-1])
        return func(*args, **kwargs)


@contextlib.contextmanager
def batch_invariant(enabled: bool = True) -> Iterator[None]:
    """While the body runs (in this thread), linears compute on their rows padded to a multiple of ROW_MULTIPLE."""
    if not enabled:
        yield
        return
    with _PadSmallLinears():
        yield


def wanted(device: torch.device) -> bool:
    """Where the guarantee holds (CPU); elsewhere the padding would cost a little and promise nothing."""
    return torch.device(device).type == "cpu"
