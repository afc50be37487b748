"""Precision names: the quickstart's base_model_precision values and plain dtypes."""

from __future__ import annotations

import pytest
import torch

from longcat.errors import UnsupportedPrecision
from longcat.models.loading import load_components
from longcat.models.precision import is_quantized, resolve_precision


@pytest.mark.parametrize("name,dtype,quant", [
    ("fp32", torch.float32, None), ("no_change", torch.float32, None), ("bf16", torch.bfloat16, None),
    ("fp16", torch.float16, None), ("int8-quanto", torch.float32, "int8-quanto"),
])
def test_names_resolve_on_cpu(name, dtype, quant):
    p = resolve_precision(name, "cpu")
    assert p.compute_dtype == dtype and p.quantization == quant


def test_fp8_on_cpu_says_it_needs_a_gpu():
    with pytest.raises(UnsupportedPrecision, match="needs a CUDA GPU") as err:
        resolve_precision("fp8-torchao", "cpu")
    assert err.value.field == "precision"


def test_unknown_precision_lists_the_valid_ones():
    with pytest.raises(UnsupportedPrecision, match="int8-quanto"):
        resolve_precision("int4-magic", "cpu")


def test_int8_quanto_quantizes_transformer_and_text_encoder_not_vae(tiny_model_path):
    from optimum.quanto import QLinear

    c = load_components(tiny_model_path, components=("transformer", "vae", "text_encoder"), device="cpu",
                        precision="int8-quanto")
    assert is_quantized(c.transformer) and is_quantized(c.text_encoder) and not is_quantized(c.vae)
    assert any(isinstance(m, QLinear) for m in c.transformer.modules())
