"""The GPU benchmark (bench/gpu_edit.py) at tiny dims on the CPU, and the speed/memory levers' numerical parity.

Tolerances, pixels in [0, 1], max |Δ| against the same edit without the lever (fp32, CPU):
  cfg_batch off, attention backend, fused QKV   1e-5   (same math, different matmul/attention blocking)
  group offload, model CPU offload              exact  (the same weights, only moved)
  int8-quanto                                   max 0.05, mean 5e-3 (weights rounded to int8; measured 7e-3 / 4e-4)
  VAE tiling                                    exact when one tile covers the image; with 64 px tiles on a
                                                128 px image mean 0.06 (measured 0.038): tiles are blended over a
                                                25 % overlap, an approximation by design, and a random VAE's seams
                                                are far rougher than a trained one's
Compile is not run here (tens of seconds per shape on a 2-core CPU) and fp8 needs a CUDA GPU: both are covered
by their refusal paths below and measured by the GPU run (bench/README.md).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from longcat.engine import EditEngine, EditRequest
from longcat.engine.levers import LeverUnavailable, SpeedConfig, apply_speed_config, execution_device

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "gpu_edit.py"


def _bench_module():
    spec = importlib.util.spec_from_file_location("gpu_edit", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


# --- the benchmark script, end to end ------------------------------------------------------------------------


@pytest.mark.slow
def test_bench_runs_at_tiny_dims_on_cpu_and_writes_the_table(tmp_path):
    out = tmp_path / "tiny.md"
    cmd = [sys.executable, str(BENCH), "--tiny", "--device", "cpu", "--out", str(out), "--steps", "2",
           "--turbo-steps", "1", "--lever-steps", "1", "--lever-size", "128", "--budget-s", "0",
           "--batch-size", "128"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    table = out.read_text()
    data = json.loads(out.with_suffix(".json").read_text())
    rows = data["rows"]
    main = [r for r in rows if r["section"] == "main"]
    # Both implementations, both settings, side by side, timed on the real request shape.
    for setting in ("2 steps, CFG 4.5", "Turbo: 1 steps, no CFG"):
        by_impl = {r["impl"]: r for r in main if r["label"] == setting}
        assert {"diffusers", "ours"} <= set(by_impl), by_impl.keys()
        for impl in ("diffusers", "ours"):
            r = by_impl[impl]
            assert r["status"] == "ok" and r["edit_s"] > 0 and r["per_step_s"] > 0, r
            assert r["tokens"] == 838 + 2 * 4096  # 1024x1024: the real token count
            assert f"| {setting} | {impl} |" in table
        # Same inputs and seed: our engine reproduces the pipeline (fp32 parity).
        assert by_impl["ours"]["diff"] <= 1e-4
    cfg = {r["impl"]: r for r in main if r["label"] == "2 steps, CFG 4.5"}
    assert cfg["diffusers"]["forwards"] == 4 and cfg["diffusers"]["batch"] == 1  # two forwards per step
    assert cfg["ours"]["forwards"] == 2 and cfg["ours"]["batch"] == 2            # one batch-2 forward per step

    levers = {r["label"]: r for r in rows if r["section"] == "levers"}
    assert levers["fuse_qkv"]["status"] == "ok" and levers["fuse_qkv"]["diff"] <= 1e-5
    assert levers["cfg_batch off (two CFG forwards)"]["diff"] <= 1e-5
    assert levers["fp8-dynamic (torchao fp8 matmuls)"]["status"].startswith("n/a: fp8 needs a CUDA GPU")
    assert levers["compile (regional, repeated blocks)"]["status"].startswith("skipped")
    memory = {r["label"]: r for r in rows if r["section"] == "memory"}
    assert memory["group_offload (transformer blocks; text encoder offloaded)"]["diff"] == 0.0
    assert memory["model_cpu_offload (text encoder, transformer)"]["diff"] == 0.0
    assert memory["int8-quanto (transformer + text encoder)"]["status"] == "ok"
    assert "## Speed levers" in table and "## Memory levers" in table
    # Step-cache presets: a row each, with PSNR against exact (levers: the baseline; main: the tuned exact edit).
    for preset in ("fast", "taylor"):
        lever = next(r for label, r in levers.items() if label.startswith(f"speed_preset={preset}"))
        assert lever["status"] == "ok" and lever["psnr_db"] is not None and lever["psnr_db"] > 40, lever
        tuned = next(r for r in main if r["impl"] == f"ours (tuned + {preset})")
        assert tuned["status"] == "ok" and tuned["psnr_db"] > 40, tuned
    # One denoiser across 2 gloo ranks: CFG-parallel and Ulysses equal one device (fp32 latents).
    parallel = {r["config"]: r for r in rows if r["section"] == "parallel"}
    for layout in ("cfg=2", "ulysses=2"):
        assert parallel[layout]["status"] == "ok" and parallel[layout]["diff"] <= 1e-4, parallel[layout]
    assert "## One denoiser across devices" in table
    batch = {r["label"]: r for r in rows if r["section"] == "batch"}
    for setting, rows_per_job in (("standard", 2), ("turbo", 1)):
        for n in (1, 2, 4):
            r = batch[f"{setting}, batch {n}"]
            assert r["status"] == "ok" and r["batch"] == n * rows_per_job and r["forwards"] == r["steps"], r
    assert "## Step scheduler" in table


def test_real_dims_shapes_token_count_and_flops():
    """The real-dimension build (on the meta device: shapes only) matches the model, and so do the counts."""
    bench = _bench_module()
    c = bench.build_components(bench.REAL, "meta", torch.bfloat16)
    assert round(bench.param_count(c.transformer) / 1e9, 2) == 6.27
    assert round(bench.param_count(c.text_encoder) / 1e9, 1) == 8.3
    assert round(bench.param_count(c.vae) / 1e6) == 84
    assert c.text_encoder.config.vision_config.fullatt_block_indexes == [7, 15, 23, 31]
    # 1024x1024 edit: the VLM sees the reference at 512x512 -> 324 vision tokens (+ start/end) + 512 prompt tokens.
    from longcat.conditioning import Geometry, prepare_reference

    ref = prepare_reference(bench.input_image(1024, 0), Geometry(1024, 1024))
    grid = c.text_processor.image_processor(images=ref.prompt_image, return_tensors="pt")["image_grid_thw"]
    text_tokens = int(grid.prod()) // c.text_processor.image_processor.merge_size ** 2 + 2 + 512
    assert text_tokens == 838
    fwd = bench.transformer_flops(c.transformer.config, 1, text_tokens, 2 * 4096)
    d, s = 3072, 9030
    assert fwd == pytest.approx(30 * (24 * s * d * d + 4 * s * s * d), rel=1e-3)  # the documented formula
    assert 100 * fwd / 1e15 == pytest.approx(9.14, abs=0.01)                     # 50 steps x CFG: 9.14 PFLOP
    assert 100 * fwd / 989.4e12 == pytest.approx(9.24, abs=0.01)                 # ideal seconds on one H100


def test_flops_formula_counts_batch_and_tokens():
    bench = _bench_module()
    cfg = SimpleNamespace(num_attention_heads=2, attention_head_dim=16, num_layers=1, num_single_layers=1,
                          joint_attention_dim=32, in_channels=64)
    one = bench.transformer_flops(cfg, 1, 10, 20)
    assert bench.transformer_flops(cfg, 2, 10, 20) == 2 * one
    assert bench.transformer_flops(cfg, 1, 10, 40) > one


# --- numerical parity per lever (CPU-applicable levers) ----------------------------------------------------


@pytest.fixture(scope="module")
def own_components(tiny_model_path):
    """A private copy: levers change modules in place (and undo); never the session-wide fixture's."""
    from longcat.models.loading import load_components

    return load_components(tiny_model_path, device="cpu", precision="fp32")


def _edit(components, config: SpeedConfig, image, size=(128, 96), steps=2, guidance=4.5):
    engine = EditEngine(components, cfg_batch=config.cfg_batch)
    return engine.edit(EditRequest(image=image, prompt="make the sky purple", width=size[0], height=size[1],
                                   num_inference_steps=steps, guidance_scale=guidance, seed=11)).pixels


@pytest.fixture(scope="module")
def baseline(own_components, sample_image):
    return _edit(own_components, SpeedConfig(), sample_image)


@pytest.mark.parametrize("config, atol", [
    (SpeedConfig(cfg_batch=False), 1e-5),
    (SpeedConfig(attention_backend="_native_math"), 1e-5),
    (SpeedConfig(attention_backend="auto"), 1e-5),
    (SpeedConfig(fuse_qkv=True), 1e-5),
    (SpeedConfig(group_offload=True), 0.0),
    (SpeedConfig(model_cpu_offload=True), 0.0),
], ids=lambda v: v.describe() if isinstance(v, SpeedConfig) else None)
def test_lever_keeps_the_image_and_undoes_bit_exactly(own_components, sample_image, baseline, config, atol):
    applied = apply_speed_config(own_components, config)
    try:
        pixels = _edit(own_components, config, sample_image)
    finally:
        applied.undo()
    diff = float((pixels - baseline).abs().max())
    print(f"\n{config.describe()}: max |diff| = {diff:.2e} (tolerance {atol:g})")
    assert diff <= atol
    assert torch.equal(_edit(own_components, SpeedConfig(), sample_image), baseline)


def test_vae_tiling_exact_with_one_tile_close_with_many(own_components, sample_image):
    square = (128, 128)
    base = _edit(own_components, SpeedConfig(), sample_image, size=square)
    for tile, check in ((128, lambda d: d.max() == 0), (64, lambda d: 0 < d.mean() <= 0.06)):
        applied = apply_speed_config(own_components, SpeedConfig(vae_tiling=True, vae_tile_size=tile))
        try:
            d = (_edit(own_components, SpeedConfig(), sample_image, size=square) - base).abs()
        finally:
            applied.undo()
        print(f"\nVAE tiles of {tile} px: max |diff| {d.max():.3f}, mean {d.mean():.4f}")
        assert check(d)
    assert torch.equal(_edit(own_components, SpeedConfig(), sample_image, size=square), base)


def test_int8_quanto_is_close_and_irreversible(tiny_model_path, sample_image, baseline):
    from longcat.models.loading import load_components
    from longcat.models.precision import is_quantized

    fresh = load_components(tiny_model_path, device="cpu", precision="fp32")
    applied = apply_speed_config(fresh, SpeedConfig(quantization="int8-quanto", quantize_text_encoder=True))
    assert is_quantized(fresh.transformer) and is_quantized(fresh.text_encoder)
    d = (_edit(fresh, SpeedConfig(), sample_image) - baseline).abs()
    print(f"\nint8-quanto: max |diff| {d.max():.2e}, mean {d.mean():.2e}")
    assert 0 < d.max() <= 0.05 and d.mean() <= 5e-3
    with pytest.raises(LeverUnavailable, match="cannot be undone"):
        applied.undo()
    with pytest.raises(LeverUnavailable, match="already quantized"):
        apply_speed_config(fresh, SpeedConfig(quantization="int8-quanto"))


# --- where a lever cannot apply, it says so ------------------------------------------------------------------


@pytest.mark.parametrize("config, match", [
    (SpeedConfig(quantization="fp8-dynamic"), "fp8 needs a CUDA GPU"),
    (SpeedConfig(quantization="fp8-torchao"), "fp8 needs a CUDA GPU"),
    (SpeedConfig(quantization="int4"), "unknown quantization"),
    (SpeedConfig(compile=True, group_offload=True), "compile with offloading"),
    (SpeedConfig(group_offload=True, model_cpu_offload=True), "pick one"),
    (SpeedConfig(fuse_qkv=True, model_cpu_offload=True), "fused QKV with offloading"),
    (SpeedConfig(quantization="int8-quanto", group_offload=True), "offloading a quantized model"),
    (SpeedConfig(quantize_text_encoder=True), "needs a weight-only quantization"),
    (SpeedConfig(attention_backend="no-such-backend"), "unknown backend"),
    (SpeedConfig(attention_backend="flash_hub"), "downloads its kernels"),
    (SpeedConfig(attention_backend="_native_cudnn"), "no usable attention backend"),
    (SpeedConfig(vae_tiling=True, vae_tile_size=100), "multiple of 64"),
], ids=lambda v: v.describe() if isinstance(v, SpeedConfig) else None)
def test_unavailable_levers_raise_and_leave_the_model_as_it_was(own_components, sample_image, baseline, config, match):
    with pytest.raises(LeverUnavailable, match=match):
        apply_speed_config(own_components, config)
    assert torch.equal(_edit(own_components, SpeedConfig(), sample_image), baseline)


def test_fused_qkv_and_lora_adapters_refuse_each_other(tiny_model_path):
    from peft import LoraConfig

    from longcat.models.loading import load_components

    c = load_components(tiny_model_path, device="cpu", precision="fp32")
    applied = apply_speed_config(c, SpeedConfig(fuse_qkv=True))
    with pytest.raises(LeverUnavailable, match="silently ignored"):  # an adapter loaded after fusing
        c.transformer.add_adapter(LoraConfig(r=2, target_modules=["to_q"]))
    applied.undo()
    c.transformer.add_adapter(LoraConfig(r=2, target_modules=["to_q"]))  # fine once unfused
    with pytest.raises(LeverUnavailable, match="LoRA adapters are loaded"):  # fusing with adapters loaded
        apply_speed_config(c, SpeedConfig(fuse_qkv=True))
    with pytest.raises(LeverUnavailable, match="recompile"):
        apply_speed_config(c, SpeedConfig(compile=True))


def test_defaults_per_device():
    assert SpeedConfig.for_device("cpu") == SpeedConfig(cfg_batch=True)
    cuda = SpeedConfig.for_device("cuda")
    assert cuda.cfg_batch and cuda.attention_backend == "auto" and cuda.compile and cuda.fuse_qkv
    assert cuda.quantization is None and not (cuda.group_offload or cuda.model_cpu_offload or cuda.vae_tiling)
    served = SpeedConfig.for_device("cuda", adapters=True)  # LoRA per request: no fusing, no recompiles
    assert not served.compile and not served.fuse_qkv and served.attention_backend == "auto"


def test_offloaded_modules_report_their_execution_device(own_components):
    for config in (SpeedConfig(model_cpu_offload=True), SpeedConfig(group_offload=True)):
        applied = apply_speed_config(own_components, config)
        try:
            assert execution_device(own_components.transformer) == torch.device("cpu")
            assert execution_device(own_components.text_encoder) == torch.device("cpu")
        finally:
            applied.undo()


def test_model_offload_needs_both_big_components(tiny_model_path):
    from longcat.models.loading import DENOISER_COMPONENTS, load_components

    denoiser_only = load_components(tiny_model_path, DENOISER_COMPONENTS, device="cpu", precision="fp32")
    with pytest.raises(LeverUnavailable, match="saves nothing"):
        apply_speed_config(denoiser_only, SpeedConfig(model_cpu_offload=True))
    applied = apply_speed_config(denoiser_only, SpeedConfig(group_offload=True))  # no text encoder: fine
    applied.undo()
