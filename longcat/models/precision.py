"""Precision names (the quickstart's ``base_model_precision`` plus plain dtypes) and how to apply them.

``fp32 | bf16 | fp16`` are load dtypes. ``int8-quanto`` and ``fp8-torchao`` are weight quantizations
applied after loading on top of a bf16 (GPU) or fp32 (CPU) compute dtype. Quantized weights are never
fused with LoRA (diffusers' ``fuse_lora`` on a quanto base is a silent no-op); adapters stay unfused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from longcat.errors import UnsupportedPrecision

_ALIASES = {
    "fp32": "fp32", "float32": "fp32", "no_change": "fp32",
    "bf16": "bf16", "bfloat16": "bf16",
    "fp16": "fp16", "float16": "fp16",
    "int8-quanto": "int8-quanto",
    "fp8-torchao": "fp8-torchao",
}
PRECISIONS = ("fp32", "bf16", "fp16", "int8-quanto", "fp8-torchao")


@dataclass(frozen=True)
class Precision:
    name: str
    compute_dtype: torch.dtype
    quantization: str | None  # None | "int8-quanto" | "fp8-torchao"

    @property
    def quantized(self) -> bool:
        return self.quantization is not None


def resolve_precision(name: str | None, device: torch.device | str, field: str = "precision") -> Precision:
    """Turn a precision name into (compute dtype, quantization) for ``device``, or raise clearly."""
    device = torch.device(device)
    key = _ALIASES.get((name or "fp32").strip().lower())
    if key is None:
        raise UnsupportedPrecision(f"unknown precision {name!r}; use one of {', '.join(PRECISIONS)}", field)
    on_gpu = device.type == "cuda"
    if key == "fp8-torchao":
        if not on_gpu:
            raise UnsupportedPrecision(
                "fp8-torchao needs a CUDA GPU with fp8 support (compute capability 8.9+); on CPU use "
                "int8-quanto or fp32", field)
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < (8, 9):
            raise UnsupportedPrecision(f"fp8-torchao needs compute capability 8.9+, this GPU has {major}.{minor}", field)
        return Precision(key, torch.bfloat16, key)
    if key == "int8-quanto":
        return Precision(key, torch.bfloat16 if on_gpu else torch.float32, key)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[key]
    return Precision(key, dtype, None)


def quantize_module(module: torch.nn.Module, precision: Precision) -> torch.nn.Module:
    """Quantize ``module``'s linear weights in place as ``precision`` says (no-op for plain dtypes)."""
    if precision.quantization == "int8-quanto":
        from optimum.quanto import freeze, qint8, quantize

        quantize(module, weights=qint8)
        freeze(module)
    elif precision.quantization == "fp8-torchao":
        try:
            from torchao.quantization import Float8WeightOnlyConfig, quantize_
        except ImportError as exc:  # pragma: no cover - GPU only
            raise UnsupportedPrecision("fp8-torchao needs the torchao package: pip install torchao", "precision") from exc
        quantize_(module, Float8WeightOnlyConfig())
    module._longcat_quantization = precision.quantization  # read by the adapter manager: never fuse onto it
    return module


def is_quantized(module: torch.nn.Module) -> bool:
    return getattr(module, "_longcat_quantization", None) is not None
