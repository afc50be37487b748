"""Mixed adapters in one forward: each batch row applies its own adapter set and scales.

diffusers' transformer forward does not pass peft's per-sample ``adapter_names`` to the LoRA layers, and that
mechanism allows one adapter per sample at its global scale anyway. So, with the layers' own LoRA disabled
(the base output), a forward hook on every peft LoRA layer adds, row group by row group, each adapter's
``lora_B(lora_A(dropout(x))) * scaling`` with the loaded A/B weights, in the order and with the float
expression peft's ``Linear.forward`` / ``set_scale`` use, so a row gets what ``set_adapters`` would give it.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch

RowAdapters = Sequence[tuple[str, float]]  # (peft adapter name, user scale), in the request's order


def _scaling(layer, name: str, scale: float) -> float:
    # peft's LoraLayer.set_scale, written the same way (the same float).
    if layer.use_rslora.get(name, False):
        return scale * layer.lora_alpha[name] / math.sqrt(layer.r[name])
    return scale * layer.lora_alpha[name] / layer.r[name]


def _hook(groups: list[tuple[slice | torch.Tensor, RowAdapters]]):
    def add_lora(layer, args, output):
        x = args[0]
        out = output
        for rows, refs in groups:
            present = [(n, s) for n, s in refs if n in layer.lora_A]
            if not present:
                continue
            xs, res = x[rows], out[rows]
            for name, scale in present:
                a = layer.lora_A[name]
                xs = xs.to(a.weight.dtype)
                res = res + layer.lora_B[name](a(layer.lora_dropout[name](xs))) * _scaling(layer, name, scale)
            if out is output and not isinstance(rows, slice):
                out = output.clone()  # rows gathered from all over: write into a copy
            out[rows] = res.to(output.dtype)  # a slice: in place (no grad here; the output is this layer's own)
        return out
    return add_lora


def _rows(idx: list[int]) -> slice | torch.Tensor:
    """A contiguous run of rows as a slice (a view, no gather), otherwise an index tensor."""
    return slice(idx[0], idx[-1] + 1) if idx == list(range(idx[0], idx[-1] + 1)) else torch.tensor(idx)


@contextmanager
def per_row_adapters(transformer: torch.nn.Module, rows: Sequence[RowAdapters]) -> Iterator[None]:
    """While the body runs, batch row ``i`` of every forward gets ``rows[i]``'s adapters (peft names). Rows
    with the same adapters side by side are cheaper (a slice of the batch, added in place).

    The caller disables the layers' own LoRA first (``AdapterManager.batch_lock`` does)."""
    by_set: dict[tuple, list[int]] = {}
    for i, refs in enumerate(rows):
        if refs:
            by_set.setdefault(tuple(refs), []).append(i)
    if not by_set:
        yield
        return
    from peft.tuners.lora import LoraLayer

    groups = [(_rows(idx), refs) for refs, idx in by_set.items()]
    hook = _hook(groups)
    handles = [m.register_forward_hook(hook) for m in transformer.modules() if isinstance(m, LoraLayer)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
