"""Training defaults where the config is silent follow Meituan's edit-LoRA recipe; the shift is the
scheduler's own; position ids on Apple MPS are float32; the pictures a finished run leaves behind."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from longcat.conditioning.geometry import Geometry, image_position_ids, position_dtype, text_position_ids
from longcat.conditioning.schedule import sample_training_sigmas, shift_mu, shift_sigmas
from longcat.training import parse_config


def test_silent_config_gets_meituans_edit_lora_recipe():
    c = parse_config({})
    # train_examples/edit_lora: lora_rank 32, LoraConfig without lora_alpha (PEFT's 8), init "gaussian",
    # null_text_ratio 0.1, learning_rate 1e-4 at train_batch_size 4 x 8 processes; sqrt-scaled to batch 1.
    assert (c.lora_rank, c.effective_lora_alpha, c.lora_init_type) == (32, 8.0, "gaussian")
    assert c.caption_dropout_probability == 0.1
    assert c.learning_rate == pytest.approx(1e-4 * math.sqrt(1 / 32), rel=0.01)
    assert parse_config({"lora_alpha": None, "lora_rank": 4}).effective_lora_alpha == 4.0
    assert parse_config({"lora_init_type": "default"}).lora_init_type == "default"
    with pytest.raises(Exception, match="lora_init_type"):
        parse_config({"lora_init_type": "loftq"})


def test_gaussian_init_is_peft_gaussian_and_b_starts_at_zero(tiny_model_path):
    from longcat.adapters import OFFICIAL_TARGET_MODULES
    from longcat.models.loading import load_components
    from longcat.training.lora import ADAPTER_NAME, add_training_lora, remove_training_lora

    # A transformer of its own: the session's shared components may carry other tests' adapters.
    t = load_components(tiny_model_path, ["transformer"], device="cpu").transformer
    try:
        add_training_lora(t, 32, 8.0, list(OFFICIAL_TARGET_MODULES), seed=0)
        assert t.peft_config[ADAPTER_NAME].init_lora_weights == "gaussian"
        a = torch.cat([p.flatten() for n, p in t.named_parameters() if "lora_A" in n])
        b = torch.cat([p.flatten() for n, p in t.named_parameters() if "lora_B" in n])
        assert a.std().item() == pytest.approx(1 / 32, rel=0.1)  # PEFT: N(0, 1/r)
        assert torch.count_nonzero(b) == 0
    finally:
        remove_training_lora(t)
    try:
        add_training_lora(t, 4, 4.0, list(OFFICIAL_TARGET_MODULES), seed=0, init="default")
        assert t.peft_config[ADAPTER_NAME].init_lora_weights is True
    finally:
        remove_training_lora(t)


def test_training_shift_is_the_schedulers_time_shift(tiny_components):
    from diffusers import FlowMatchEulerDiscreteScheduler

    config = tiny_components.scheduler.config
    u = torch.linspace(0.05, 0.95, 7)
    mu = shift_mu(1024, config)
    assert torch.equal(shift_sigmas(u, mu, config), tiny_components.scheduler.time_shift(mu, 1.0, u))
    # A scheduler configured for the linear shift is followed too (a copied formula would not).
    linear = FlowMatchEulerDiscreteScheduler.from_config({**config, "time_shift_type": "linear"})
    assert torch.allclose(shift_sigmas(u, mu, linear.config), mu / (mu + (1 / u - 1)))
    assert not torch.allclose(shift_sigmas(u, mu, linear.config), shift_sigmas(u, mu, config))
    gen = torch.Generator().manual_seed(0)
    s = sample_training_sigmas(8, 1024, config, generator=gen)
    expected = tiny_components.scheduler.time_shift(mu, 1.0, torch.randn(8, generator=torch.Generator().manual_seed(0)).sigmoid())
    assert torch.equal(s, expected)


@pytest.mark.parametrize("device,expected", [("mps", torch.float32), (torch.device("mps:0"), torch.float32),
                                             ("cpu", torch.float64), ("cuda", torch.float64), (None, torch.float64)])
def test_position_ids_are_float32_on_mps_only(device, expected):
    assert position_dtype(device, torch.float64) == expected
    assert position_dtype(device, torch.float32) == torch.float32  # never widened


def test_position_ids_keep_the_pipelines_dtypes_off_mps():
    ids = image_position_ids(Geometry(width=64, height=64), 5)
    assert ids.dtype == torch.float64 and text_position_ids(5).dtype == torch.float32


def test_loss_plot_and_validation_grid(tmp_path):
    from longcat.training.result_images import smooth, validation_grid, write_loss_plot

    path = write_loss_plot([1.0 - i / 100 for i in range(50)] + [float("nan")], tmp_path / "loss.png")
    img = Image.open(path)
    assert img.size == (640, 360) and len(set(img.getdata())) > 3  # a drawn chart, not a blank canvas
    assert smooth([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])  # debiased: no pull towards 0
    red, blue = Image.new("RGB", (64, 32), (255, 0, 0)), Image.new("RGB", (32, 32), (0, 0, 255))
    grid = validation_grid([red, red], ["a", "b"], [("step 1", [blue, blue]), ("step 2", [blue, blue])], cell=50)
    assert grid.size == (84 + 4 * 56 + 6, 34 + 2 * 56 + 6)
    # row 1: reference (red) then edit (blue) for each prompt
    y = 34 + 6 + 25
    assert grid.getpixel((84 + 6 + 25, y)) == (255, 0, 0) and grid.getpixel((84 + 6 + 56 + 25, y)) == (0, 0, 255)
