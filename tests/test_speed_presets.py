"""Step-cache speed presets on the tiny model: exact stays exact, presets drift boundedly, hooks never leak,
and the quality gate refuses what was not measured or drifts past the bound."""

from __future__ import annotations

import pytest
import torch

from longcat.api.edit import EditRequest, validate_request
from longcat.conditioning import Geometry
from longcat.engine import caching
from longcat.engine.denoise import DenoiseJob, DenoiseLoop
from longcat.engine.quality_gate import PresetGate, QualityRecord, model_fingerprint, psnr, ssim
from longcat.errors import InvalidArgument

G = Geometry(width=128, height=128)


@pytest.fixture(scope="module")
def loop(tiny_components):
    return DenoiseLoop(tiny_components.transformer, tiny_components.vae, tiny_components.scheduler,
                       cfg_batch=False)


def _job(loop, preset="exact", steps=12, seed=3):
    g = torch.Generator().manual_seed(0)
    dim = loop.transformer.config.joint_attention_dim
    pe, ne = torch.randn(1, 24, dim, generator=g), torch.randn(1, 24, dim, generator=g)
    ref = torch.randn(1, G.image_seq_len, 64, generator=g)
    return DenoiseJob(pe, ne, ref, G, steps, 4.5, seed, preset)


def _run(loop, preset, batched=False):
    loop.cfg_batch = batched
    try:
        return loop.run(_job(loop, preset))
    finally:
        loop.cfg_batch = False


def test_unknown_preset_is_refused_naming_the_field(sample_image):
    with pytest.raises(InvalidArgument) as err:
        validate_request(EditRequest(image=sample_image, prompt="x", speed_preset="warp"))
    assert err.value.field == "speed_preset" and "fast" in str(err.value)
    assert validate_request(EditRequest(image=sample_image, prompt="x", speed_preset="")).speed_preset == "exact"


@pytest.mark.parametrize("preset", ["fast", "taylor"])
@pytest.mark.parametrize("batched", [False, True], ids=["two-forwards", "batch2"])
def test_preset_drift_is_bounded_and_nothing_leaks_into_the_next_run(loop, preset, batched):
    exact = _run(loop, "exact", batched)
    cached = _run(loop, preset, batched)
    caching.assert_no_cache(loop.transformer)
    assert torch.isfinite(cached).all()
    assert psnr(cached / 8 + 0.5, exact / 8 + 0.5) > 40  # latents ~N(0,1): mapped into [0, 1] for the metric
    again = _run(loop, "exact", batched)
    assert torch.equal(again, exact)  # byte-identical: no hook, state or config survived the preset's run


def test_taylor_really_changes_the_computation(loop):
    # TaylorSeer forecasts attention between full steps: a different (approximate) result, not a no-op.
    assert not torch.equal(_run(loop, "taylor"), _run(loop, "exact"))


def test_first_block_cache_skips_blocks_on_longcat(tiny_components, loop):
    """FirstBlockCache on LongCat needs our block registration; with a loose threshold it must skip steps."""
    from diffusers.hooks import FirstBlockCacheConfig

    caching.register_longcat_blocks()
    calls = []
    last = loop.transformer.single_transformer_blocks[-1].attn
    handle = last.register_forward_pre_hook(lambda *a: calls.append(1))
    t = loop.transformer
    try:
        _run(loop, "exact")
        full = len(calls)
        calls.clear()
        t.enable_cache(FirstBlockCacheConfig(threshold=10.0))
        try:
            loop.run(_job(loop, "exact"))
        finally:
            t.disable_cache()
        assert 0 < len(calls) < full, (len(calls), full)
    finally:
        handle.remove()
    caching.assert_no_cache(t)


def test_a_failing_run_still_removes_the_hooks(loop):
    job = _job(loop, "taylor")
    job.reference_latents = torch.randn(1, 7, 64)  # wrong length: the forward fails mid-run
    with pytest.raises(Exception):
        loop.run(job)
    caching.assert_no_cache(loop.transformer)


def test_quality_metrics():
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert psnr(x, x) == float("inf") and ssim(x, x) == pytest.approx(1.0)
    noisy = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert 15 < psnr(noisy, x) < 25 and ssim(noisy, x) < 0.95


def test_gate_refuses_unmeasured_or_drifting_presets(tiny_components):
    model = model_fingerprint(tiny_components.transformer)
    gate = PresetGate(None, model)
    assert gate.check("exact") == "exact"
    with pytest.raises(InvalidArgument, match="no quality record") as err:
        gate.check("fast")
    assert err.value.field == "speed_preset"
    record = QualityRecord(model, {"": {"fast": {"psnr_db": 41.0}, "taylor": {"psnr_db": 22.0}}})
    gate = PresetGate(record, model, min_psnr_db=30)
    assert gate.check("fast") == "fast"
    with pytest.raises(InvalidArgument, match="22.0 dB < bound 30.0") as err:
        gate.check("taylor")
    assert err.value.field == "speed_preset"
    with pytest.raises(InvalidArgument, match="no recorded drift for adapters style"):
        gate.check("fast", ["style"])
    with pytest.raises(InvalidArgument, match="another model"):
        PresetGate(record, "someothermodel").check("fast")


def test_quality_cli_records_and_the_engine_gate_uses_it(engine, tmp_path, tiny_model_path, sample_image):
    from longcat.cli.main import main

    record = tmp_path / "quality.json"
    assert main(["quality", "--model", tiny_model_path, "--device", "cpu", "--steps", "6", "--size", "64",
                 "--probes", "1", "--record", str(record), "--json"]) == 0
    saved = QualityRecord.load(record)
    assert saved.model == model_fingerprint(engine.components.transformer)
    assert set(saved.entries[""]) == {"fast", "taylor"}
    assert saved.entries[""]["taylor"]["psnr_db"] > 40
    engine.gate = PresetGate.from_file(str(record), engine.components.transformer, min_psnr_db=1000)
    try:
        req = EditRequest(image=sample_image, prompt="x", width=64, height=64, num_inference_steps=2, seed=1,
                          speed_preset="taylor")
        with pytest.raises(InvalidArgument, match="bound 1000.0 dB"):
            engine.edit(req)
    finally:
        engine.gate = None
