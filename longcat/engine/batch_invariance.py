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
switches, bf16/fp16, and a linear computed with ``F.linear`` outside an ``nn.Linear`` module (none in this
transformer, peft's LoRA layers or our per-row LoRA hook). It is a pair of hooks on every ``nn.Linear`` of
the module for the duration of the forward (LoRA layers included, whenever they were added): about a third
of the per-forward cost of a ``TorchFunctionMode`` that sees every torch call (bench/batch_invariance.py).
The caller holds the module for that forward (the loop's lock): the hooks are the module's, not a thread's.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import torch
from torch import nn

ROW_MULTIPLE = 4  # GEMM rows in multiples of this take the batch-invariant path (measured on CPU, see above)


class _PadRows:
    """Forward pre-hook + hook for an ``nn.Linear``: rows padded up to a multiple of ROW_MULTIPLE, sliced back."""

    def __init__(self):
        self._shapes = threading.local()  # the input shapes of the linears in progress (a stack)

    def _stack(self) -> list:
        stack = getattr(self._shapes, "stack", None)
        if stack is None:
            stack = self._shapes.stack = []
        return stack

    def pre(self, module, args):
        x = args[0] if args else None
        rows = x.numel() // x.shape[-1] if x is not None and x.dim() and x.shape[-1] else 0
        pad = -rows % ROW_MULTIPLE
        if not rows or not pad:
            self._stack().append(None)
            return None
        self._stack().append((x.shape, rows))
        flat = x.reshape(rows, x.shape[-1])
        return (torch.cat([flat, flat.new_zeros(pad, x.shape[-1])]), *args[1:])

    def post(self, module, args, output):
        entry = self._stack().pop()
        if entry is None:
            return None
        shape, rows = entry
        return output[:rows].reshape(*shape[:-1], output.shape[-1])


@contextlib.contextmanager
def batch_invariant(module: nn.Module, enabled: bool = True) -> Iterator[None]:
    """While the body runs, every ``nn.Linear`` in ``module`` computes on its rows padded to a multiple of
    ROW_MULTIPLE. Enter it around each forward: LoRA layers added since are covered too."""
    if not enabled:
        yield
        return
    pad = _PadRows()
    handles = []
    try:
        for m in module.modules():
            if isinstance(m, nn.Linear):
                handles.append(m.register_forward_pre_hook(pad.pre))
                handles.append(m.register_forward_hook(pad.post))
        yield
    finally:
        for h in handles:
            h.remove()


def wanted(device: torch.device) -> bool:
    """Where the guarantee holds (CPU); elsewhere the padding would cost a little and promise nothing."""
    return torch.device(device).type == "cpu"
