"""The edit engine: sizes, seeds, callbacks, cancellation, previews, precisions and every bad input."""

from __future__ import annotations

import io
import math
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from longcat.engine import AdapterRef, EditEngine, EditRequest, Limits
from longcat.errors import (
    AdapterMismatch,
    AdapterNotFound,
    Cancelled,
    InvalidArgument,
    InvalidImage,
    PromptTooLong,
)

SMALL = dict(width=64, height=64, num_inference_steps=2)


def _png(img: Image.Image, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _edit(engine, image, **kw):
    args = dict(SMALL, prompt="make it purple", seed=1)
    args.update(kw)
    return engine.edit(EditRequest(image=image, **args))


def test_explicit_size_and_png_bytes_in(engine, sample_image):
    r = _edit(engine, _png(sample_image), width=128, height=96, num_inference_steps=3)
    assert r.image.size == (128, 96) and (r.width, r.height) == (128, 96)
    assert r.pixels.shape == (1, 3, 96, 128)
    assert set(r.timings) == {"encode_s", "denoise_s", "decode_s", "total_s"}


def test_same_seed_same_pixels_other_seed_other_pixels(engine, sample_image):
    a, b = _edit(engine, sample_image, seed=7), _edit(engine, sample_image, seed=7)
    c = _edit(engine, sample_image, seed=8)
    assert torch.equal(a.pixels, b.pixels)
    assert not torch.equal(a.pixels, c.pixels)


def test_random_seed_is_reported_and_reproduces(engine, sample_image):
    first = _edit(engine, sample_image, seed=None)
    again = _edit(engine, sample_image, seed=first.seed)
    assert torch.equal(first.pixels, again.pixels)


def test_prompt_changes_the_result(engine, sample_image):
    assert not torch.equal(_edit(engine, sample_image, prompt="make it red").pixels,
                           _edit(engine, sample_image, prompt="make it blue").pixels)


def test_step_callback_reports_every_step(engine, sample_image):
    events = []
    engine.edit(EditRequest(image=sample_image, prompt="x", seed=1, width=64, height=64, num_inference_steps=4),
                on_step=events.append)
    assert [e.step for e in events] == [1, 2, 3, 4]
    assert all(e.total == 4 for e in events)
    assert events[-1].eta_s == 0 and all(e.elapsed_s >= 0 for e in events)


def test_cancel_stops_between_steps(engine, sample_image):
    cancel = threading.Event()
    seen = []

    def on_step(ev):
        seen.append(ev.step)
        if ev.step == 2:
            cancel.set()

    with pytest.raises(Cancelled, match="before step 3 of 6"):
        engine.edit(EditRequest(image=sample_image, prompt="x", seed=1, width=64, height=64, num_inference_steps=6),
                    on_step=on_step, cancel=cancel)
    assert seen == [1, 2]
    # The engine is still usable after a cancellation.
    assert _edit(engine, sample_image).image.size == (64, 64)


def test_previews_are_small_decoded_estimates(engine, sample_image):
    events = []
    engine.edit(EditRequest(image=sample_image, prompt="x", seed=1, width=256, height=128, num_inference_steps=4),
                on_step=events.append, preview_every=2)
    previews = [e.preview for e in events if e.preview is not None]
    assert [e.step for e in events if e.preview is not None] == [2, 4]
    p = previews[-1]
    assert p.shape[:2] == (1, 3) and p.shape[-1] < 256 and 0 <= p.min() and p.max() <= 1


def test_guidance_one_runs_without_cfg(engine, sample_image):
    r = _edit(engine, sample_image, guidance_scale=1.0)
    assert r.image.size == (64, 64)


def test_negative_prompt_matters_with_cfg(engine, sample_image):
    assert not torch.equal(_edit(engine, sample_image, negative_prompt="").pixels,
                           _edit(engine, sample_image, negative_prompt="blurry").pixels)


# --- inputs of every kind -------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["RGBA", "P", "L", "CMYK", "I;16", "1"])
def test_non_rgb_modes_are_converted(engine, sample_image, mode):
    img = sample_image.convert("RGBA" if mode == "RGBA" else "L") if mode in ("RGBA", "I;16", "L", "1") else sample_image
    if mode == "I;16":
        img = Image.fromarray((np.asarray(img, dtype=np.uint16) * 257).astype(np.uint16))
    elif mode == "1":
        img = img.convert("1")
    elif mode in ("P", "CMYK"):
        img = sample_image.convert(mode)
    data = _png(img, "JPEG" if mode == "CMYK" else "PNG")
    assert _edit(engine, data).image.mode == "RGB"


def test_exif_rotation_is_honoured_in_the_default_size(engine):
    wide = Image.new("RGB", (160, 80), (10, 200, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: the picture is really 80 x 160 (portrait)
    data = _png(wide, "JPEG", exif=exif)
    req = engine.validate(EditRequest(image=data, prompt="x"))
    assert req.geometry.height > req.geometry.width


@pytest.mark.parametrize("data,match", [(b"", "empty"), (b"not an image at all", "cannot be decoded")])
def test_bad_image_bytes(engine, data, match):
    with pytest.raises(InvalidImage, match=match) as err:
        _edit(engine, data)
    assert err.value.field == "image"


def test_truncated_png(engine, sample_image):
    data = _png(sample_image)
    with pytest.raises(InvalidImage) as err:
        _edit(engine, data[: len(data) // 2])
    assert err.value.field == "image"


@pytest.mark.parametrize("kw,field", [
    (dict(width=100, height=64), "width"),
    (dict(width=64, height=70), "height"),
    (dict(width=64, height=0), "height"),
    (dict(width=32, height=64), "width"),
    (dict(width=4096, height=4096), "width"),
    (dict(num_inference_steps=0), "num_inference_steps"),
    (dict(num_inference_steps=-3), "num_inference_steps"),
    (dict(num_inference_steps=10_000), "num_inference_steps"),
    (dict(guidance_scale=math.nan), "guidance_scale"),
    (dict(guidance_scale=-1.0), "guidance_scale"),
    (dict(guidance_scale=math.inf), "guidance_scale"),
    (dict(seed=-5), "seed"),
    (dict(prompt="   "), "prompt"),
    (dict(adapters=[AdapterRef("../etc/passwd")]), "adapters[0].name"),
    (dict(adapters=[AdapterRef("ok", math.nan)]), "adapters[0].scale"),
])
def test_invalid_fields_are_named(engine, sample_image, kw, field):
    with pytest.raises(InvalidArgument) as err:
        _edit(engine, sample_image, **kw)
    assert err.value.field == field
    assert str(err.value).startswith(field + ":")


def test_pixel_limit_is_configurable(tiny_components, sample_image):
    strict = EditEngine(tiny_components, limits=Limits(max_pixels=128 * 128))
    with pytest.raises(InvalidArgument, match="over the limit of 16384"):
        strict.validate(EditRequest(image=sample_image, prompt="x", width=256, height=128))
    # ...and the default size shrinks to fit the limit instead of failing.
    req = strict.validate(EditRequest(image=sample_image, prompt="x"))
    assert req.geometry.width * req.geometry.height <= 128 * 128


def test_reference_pixel_limit(tiny_components):
    strict = EditEngine(tiny_components, limits=Limits(max_input_pixels=50 * 50))
    with pytest.raises(InvalidImage, match="image"):
        strict.validate(EditRequest(image=_png(Image.new("RGB", (100, 100))), prompt="x"))


def test_prompt_over_512_tokens(engine, sample_image):
    with pytest.raises(PromptTooLong) as err:
        _edit(engine, sample_image, prompt="purple " * 700)
    assert err.value.field == "prompt"
    with pytest.raises(PromptTooLong) as err:
        _edit(engine, sample_image, negative_prompt="blurry " * 700)
    assert err.value.field == "negative_prompt"
    assert _edit(engine, sample_image, prompt="purple " * 700, truncate_prompt=True).image.size == (64, 64)


def test_unknown_adapter(engine, sample_image):
    with pytest.raises(AdapterNotFound) as err:
        _edit(engine, sample_image, adapters=[AdapterRef("no-such-adapter")])
    assert err.value.field.startswith("adapters[0]")


def test_adapter_for_another_architecture(engine, sample_image, tmp_path):
    from safetensors.torch import save_file

    bad = tmp_path / "wrong-arch"
    bad.mkdir()
    # A LoRA for a wider model: rank 4 on a 3072-wide to_q (ours is 32 wide).
    save_file({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.randn(4, 3072),
               "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.randn(3072, 4)},
              str(bad / "pytorch_lora_weights.safetensors"))
    with pytest.raises(AdapterMismatch):
        engine.adapters.load("wrong-arch", bad)
    base = _edit(engine, sample_image)
    assert torch.equal(base.pixels, _edit(engine, sample_image).pixels)


def test_int8_quanto_edit_runs_and_stays_close(tiny_model_path, sample_image):
    quant = EditEngine.load(tiny_model_path, device="cpu", precision="int8-quanto")
    full = EditEngine.load(tiny_model_path, device="cpu", precision="fp32")
    q = _edit(quant, sample_image)
    f = _edit(full, sample_image)
    assert q.image.size == (64, 64)
    diff = (q.pixels - f.pixels).abs()
    assert 0 < diff.max().item() < 0.5  # quantized: not identical, still the same picture


def _random_lora(transformer, out_dir, seed, rank=4):
    """A random (non-zero) LoRA saved in diffusers format, as the trainer publishes."""
    import copy

    from peft import LoraConfig

    from longcat.adapters import OFFICIAL_TARGET_MODULES, save_lora

    t = copy.deepcopy(transformer)
    t.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=OFFICIAL_TARGET_MODULES), adapter_name="x")
    gen = torch.Generator().manual_seed(seed)
    for name, p in t.named_parameters():
        if "lora_" in name:
            p.data = torch.randn(p.shape, generator=gen) * 0.3
    return save_lora(t, "x", out_dir, rank=rank, alpha=rank)


def test_adapters_by_name_with_weights_and_exact_base_after(tiny_components, sample_image, tmp_path):
    from longcat.adapters import AdapterManager, AdapterStore

    _random_lora(tiny_components.transformer, tmp_path / "style-a", seed=1)
    _random_lora(tiny_components.transformer, tmp_path / "style-b", seed=2)
    engine = EditEngine(tiny_components, adapter_manager=AdapterManager(
        tiny_components.transformer, AdapterStore(tmp_path), capacity=4))
    base = _edit(engine, sample_image)
    a = _edit(engine, sample_image, adapters=[AdapterRef("style-a")])
    ab = _edit(engine, sample_image, adapters=[AdapterRef("style-a"), AdapterRef("style-b", 0.5)])
    assert not torch.equal(base.pixels, a.pixels) and not torch.equal(a.pixels, ab.pixels)
    assert torch.equal(base.pixels, _edit(engine, sample_image).pixels)  # switching back: bit-exact base
    assert torch.equal(a.pixels, _edit(engine, sample_image, adapters=[AdapterRef("style-a")]).pixels)
