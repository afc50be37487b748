#!/usr/bin/env python
"""Speed and memory of a LongCat-Image edit: diffusers' own pipeline against our engine, and every lever.

Builds the REAL-dimension components with random weights directly on the device (no download): the LongCat DiT
(10 double + 20 single blocks, 24 heads x 128), a Qwen2.5-VL-7B-shaped encoder with its vision tower, the
FLUX-shaped 16-channel VAE, the real scheduler and Qwen image-processor settings, and a tokenizer that yields
the real token counts (838 text/vision tokens at 1024x1024). Then, in one run, on the same inputs and seed:

  main    ``LongCatImageEditPipeline.__call__`` vs ``EditEngine`` (default levers) vs ``EditEngine`` with
          ``SpeedConfig.for_device`` -- at 1024x1024, 50 steps + CFG 4.5, and at the Turbo setting (8 steps, no CFG)
  levers  each speed lever on/off against our default engine (per-step time, MFU, pixel change)
  memory  each memory lever (the quickstart's OOM advice): peak GPU memory and speed
  batch   the step scheduler (longcat/engine/step_scheduler.py): batch 1 / 2 / 4 edits at --batch-size (512²)
          sharing each forward, at --lever-steps + CFG and at the Turbo setting; per-image time vs batch 1

Per-step time and FLOPs come from hooks on the transformer (CUDA-synchronised): FLOPs are computed for the
shapes of every actual forward with :func:`transformer_flops`. MFU = those FLOPs / time / the GPU's dense bf16
peak. ``--tiny --device cpu`` runs the very same code at tiny dims as a test (tests/test_bench_gpu_edit.py).

    python bench/gpu_edit.py --out bench/results/h100.md                     # real dims, GPU (~6-7 min)
    python bench/gpu_edit.py --tiny --device cpu --out /tmp/tiny.md         # tiny dims, CPU (~1 min)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import platform
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

# --- dimensions ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dims:
    name: str
    transformer: dict
    text: dict
    vision: dict
    vae: dict
    tie_word_embeddings: bool = False


REAL = Dims(
    name="real",
    transformer=dict(patch_size=1, in_channels=64, num_layers=10, num_single_layers=20, attention_head_dim=128,
                     num_attention_heads=24, joint_attention_dim=3584, pooled_projection_dim=3584,
                     axes_dims_rope=[16, 56, 56]),
    # Qwen2.5-VL-7B-Instruct's config.
    text=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
              num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000, rms_norm_eps=1e-6,
              rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}),
    vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112, tokens_per_second=2,
                fullatt_block_indexes=[7, 15, 23, 31]),
    # FLUX.1's VAE without quant convs (what LongCat-Image ships).
    vae=dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32, sample_size=1024),
)


def _tiny_dims() -> Dims:
    from longcat.models.tiny import TINY_SIZES as s

    return Dims(
        name="tiny",
        transformer=dict(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                         attention_head_dim=s["transformer_head_dim"], num_attention_heads=s["transformer_heads"],
                         joint_attention_dim=s["text_hidden"], pooled_projection_dim=s["text_hidden"],
                         axes_dims_rope=[4, 4, 8]),
        text=dict(hidden_size=s["text_hidden"], intermediate_size=2 * s["text_hidden"],
                  num_hidden_layers=s["text_layers"], num_attention_heads=s["text_heads"], num_key_value_heads=1,
                  max_position_embeddings=4096,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]}),
        vision=dict(depth=s["vision_depth"], hidden_size=s["vision_hidden"], intermediate_size=2 * s["vision_hidden"],
                    num_heads=2, out_hidden_size=s["text_hidden"], fullatt_block_indexes=[1], window_size=112),
        vae=dict(block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4, sample_size=32),
        tie_word_embeddings=True,
    )


# --- building the components ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _creating_on(device: torch.device, dtype: torch.dtype):
    """Parameters are created directly on ``device`` in ``dtype`` (no fp32 CPU copy of 15 B parameters)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def build_transformer(dims: Dims, device, dtype, seed: int = 0):
    from diffusers import LongCatImageTransformer2DModel

    torch.manual_seed(seed + 2)
    with _creating_on(torch.device(device), dtype):
        return LongCatImageTransformer2DModel(**dims.transformer).eval().requires_grad_(False)


def build_text_encoder(dims: Dims, tokenizer, device, dtype, seed: int = 0):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from longcat.models.tiny import QWEN_SPECIAL_TOKENS

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    text = dict(vocab_size=max(len(tokenizer), dims.text.get("vocab_size", 0)), **{
        k: v for k, v in dims.text.items() if k != "vocab_size"})
    text.update(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    config = Qwen2_5_VLConfig(
        text_config=text, vision_config=dict(dims.vision), tie_word_embeddings=dims.tie_word_embeddings,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    with _creating_on(torch.device(device), dtype):
        model = Qwen2_5_VLForConditionalGeneration(config)
    return model.to(dtype).eval().requires_grad_(False)


def build_vae(dims: Dims, device, dtype, seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed + 1)
    with _creating_on(torch.device(device), dtype):
        return AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159,
            use_quant_conv=False, use_post_quant_conv=False, **dims.vae,
        ).eval().requires_grad_(False)


def build_components(dims: Dims, device, dtype: torch.dtype, seed: int = 0):
    """All six components at ``dims`` with random weights, made on ``device`` (``meta`` works: shapes only)."""
    from longcat.models.loading import Components
    from longcat.models.precision import Precision
    from longcat.models.processor import ImageOnlyQwenProcessor
    from longcat.models.tiny import _image_processor, _scheduler, build_tokenizer

    device = torch.device(device)
    tokenizer = build_tokenizer(seed)  # byte-level BPE as Qwen2Tokenizer + the Qwen special tokens
    name = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    return Components(
        model_path=f"random:{dims.name}", device=device, precision=Precision(name, dtype, None),
        scheduler=_scheduler(),  # the checkpoint's settings: dynamic shift between 256 and 4096 tokens
        vae=build_vae(dims, device, dtype, seed),
        text_encoder=build_text_encoder(dims, tokenizer, device, dtype, seed),
        tokenizer=tokenizer,
        text_processor=ImageOnlyQwenProcessor(_image_processor()),  # Qwen's min/max pixels, patch 14, merge 2
        transformer=build_transformer(dims, device, dtype, seed),
        fingerprint=f"random-{dims.name}-{seed}",
    )


def param_count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _si(x: float, unit: str) -> str:
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}"


# --- FLOPs and peak -------------------------------------------------------------------------------------------


def transformer_flops(config, batch: int, text_tokens: int, image_tokens: int) -> float:
    """FLOPs of one ``LongCatImageTransformer2DModel`` forward (multiply-add = 2 FLOPs).

    With d = heads x head_dim and S = text + image tokens (image = noisy + reference), every block, double or
    single, does 12 d^2 multiply-adds per token in its linears -- double: q,k,v,out (4 d^2) + MLP d->4d->d (8 d^2)
    for each stream; single: q,k,v (3 d^2) + MLP in d->4d (4 d^2) + out (d+4d)->d (5 d^2) -- so
        linears    2 * S * 12 d^2  = 24 S d^2          per block
        attention  2 * S^2 * d (Q K^T) + 2 * S^2 * d (P V) = 4 S^2 d   per block (joint, unmasked)
    plus the embedders (text 2 T J d, latents 2 I 64 d, output 2 I d 64) and the AdaLN modulations on the timestep
    embedding (per sample: 2 d x 6d x 2 per double block, 2 d x 3d per single block, 2 d x 2d at the end).
    Norms, RoPE, softmax and activations are not counted (conventional for MFU).
    """
    d = config.num_attention_heads * config.attention_head_dim
    blocks = config.num_layers + config.num_single_layers
    s = text_tokens + image_tokens
    per_sample = blocks * (24 * s * d * d + 4 * s * s * d)
    per_sample += 2 * text_tokens * config.joint_attention_dim * d + 2 * image_tokens * config.in_channels * d * 2
    per_sample += 2 * d * d * (12 * config.num_layers + 3 * config.num_single_layers + 2) + 2 * (256 * d + d * d)
    return float(batch * per_sample)


# Dense (no sparsity) bf16 tensor-core peaks, FLOP/s, from the vendors' data sheets.
_PEAKS = (("H200", 989.4e12), ("H100 PCIe", 756.0e12), ("H100", 989.4e12), ("GH200", 989.4e12), ("B200", 2250e12),
          ("A100", 312e12), ("L40S", 362.1e12), ("L4", 121e12), ("A10", 125e12), ("4090", 165.2e12))


def peak_flops(device: torch.device, override_tflops: float | None = None) -> tuple[float | None, str]:
    if override_tflops:
        return override_tflops * 1e12, f"{override_tflops:g} TFLOP/s (given)"
    if device.type != "cuda":
        return None, "n/a on CPU"
    name = torch.cuda.get_device_name(device)
    for key, peak in _PEAKS:
        if key in name:
            return peak, f"{peak / 1e12:g} TFLOP/s dense bf16 ({name})"
    return None, f"unknown for {name}: pass --peak-tflops"


# --- timing --------------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ForwardMeter:
    """Hooks on the transformer: first forward start to last forward end (synchronised), FLOPs of each call."""

    def __init__(self, transformer, device: torch.device):
        self.transformer, self.device = transformer, device
        self.reset()
        self._handles = [
            transformer.register_forward_pre_hook(self._pre, with_kwargs=True, prepend=True),
            transformer.register_forward_hook(self._post),
        ]

    def reset(self) -> None:
        self.start = self.end = None
        self.calls = 0
        self.flops = 0.0
        self.shape = None  # (batch, text tokens, image tokens) of the last call

    def _pre(self, module, args, kwargs):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        text = kwargs.get("encoder_hidden_states")
        _sync(self.device)
        if self.start is None:
            self.start = time.perf_counter()
        self.calls += 1
        self.shape = (hidden.shape[0], text.shape[1], hidden.shape[1])
        self.flops += transformer_flops(module.config, *self.shape)

    def _post(self, module, args, output):
        _sync(self.device)
        self.end = time.perf_counter()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


@dataclass
class Row:
    section: str
    label: str
    impl: str = ""
    config: str = ""
    size: int = 0
    steps: int = 0
    guidance: float = 0.0
    status: str = "ok"
    forwards: int = 0
    tokens: int = 0            # transformer tokens per sample per forward (text + noisy + reference)
    batch: int = 0
    per_step_s: float | None = None
    denoise_s: float | None = None
    edit_s: float | None = None
    setup_s: float | None = None   # applying the levers + the warm-up edit (compiles happen there)
    flops: float = 0.0
    mfu: float | None = None
    mfu_edit: float | None = None
    peak_gib: float | None = None
    diff: float | None = None      # max |pixel difference| against the reference row, pixels in [0, 1]
    diff_ref: str = ""
    psnr_db: float | None = None   # PSNR of the pixels against the reference row (step caches: vs exact)
    note: str = ""


@dataclass
class Context:
    args: argparse.Namespace
    dims: Dims
    device: torch.device
    dtype: torch.dtype
    components: Any
    image: Any
    peak: float | None
    peak_text: str
    started: float = field(default_factory=time.perf_counter)
    rows: list[Row] = field(default_factory=list)
    header: dict = field(default_factory=dict)
    pixels: dict = field(default_factory=dict)  # reference pixels for the Δ columns

    def over_budget(self) -> bool:
        return self.args.budget_s and time.perf_counter() - self.started > self.args.budget_s


def _cleanup(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def timed_edit(ctx: Context, run: Callable[[], torch.Tensor], row: Row) -> torch.Tensor:
    """Time ``--repeats`` edits and keep the fastest in ``row`` (times, FLOPs, MFU, peak memory)."""
    best = None
    for _ in range(max(1, ctx.args.repeats)):
        trial = dataclasses.replace(row)
        pixels = _timed_once(ctx, run, trial)
        if best is None or trial.edit_s < best.edit_s:
            best = trial
    for f in ("edit_s", "forwards", "flops", "batch", "tokens", "denoise_s", "per_step_s", "mfu", "mfu_edit",
              "peak_gib"):
        setattr(row, f, getattr(best, f))
    return pixels


def _timed_once(ctx: Context, run: Callable[[], torch.Tensor], row: Row) -> torch.Tensor:
    device = ctx.device
    meter = ForwardMeter(ctx.components.transformer, device)
    try:
        _cleanup(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        _sync(device)
        t0 = time.perf_counter()
        pixels = run()
        _sync(device)
        row.edit_s = time.perf_counter() - t0
    finally:
        meter.remove()
    row.forwards, row.flops = meter.calls, meter.flops
    if meter.shape:
        row.batch, row.tokens = meter.shape[0], meter.shape[1] + meter.shape[2]
    if meter.start is not None:
        row.denoise_s = meter.end - meter.start
        row.per_step_s = row.denoise_s / row.steps
    if ctx.peak and row.denoise_s:
        row.mfu = row.flops / row.denoise_s / ctx.peak
        row.mfu_edit = row.flops / row.edit_s / ctx.peak
    if device.type == "cuda":
        row.peak_gib = torch.cuda.max_memory_allocated(device) / 2**30
    return pixels.detach().float().cpu()


def _psnr(a: torch.Tensor | None, b: torch.Tensor | None) -> float | None:
    from longcat.engine.quality_gate import psnr

    if a is None or b is None or a.shape != b.shape:
        return None
    return psnr(a.clamp(0, 1), b.clamp(0, 1))


def _diff(a: torch.Tensor | None, b: torch.Tensor | None) -> float | None:
    if a is None or b is None or a.shape != b.shape:
        return None
    return float((a - b).abs().max())


# --- the two implementations --------------------------------------------------------------------------------

PROMPT = "make the sky purple and put a small red kite in it"


def input_image(size: int, seed: int):
    from PIL import Image

    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([x, y, 1 - x * y], axis=-1) * 200 + rng.rand(size, size, 3) * 55
    return Image.fromarray(base.astype("uint8"))


def diffusers_edit(ctx: Context, steps: int, guidance: float) -> torch.Tensor:
    from diffusers import LongCatImageEditPipeline

    pipe = LongCatImageEditPipeline(**ctx.components.as_pipeline_kwargs())
    pipe.set_progress_bar_config(disable=True)
    out = pipe(ctx.image, PROMPT, negative_prompt="", num_inference_steps=steps, guidance_scale=guidance,
               generator=torch.Generator("cpu").manual_seed(ctx.args.seed), output_type="pt")
    return out.images


def ours_edit(ctx: Context, config, steps: int, guidance: float, size: int, preset: str = "exact") -> torch.Tensor:
    from longcat.engine import EditEngine, EditRequest

    engine = EditEngine(ctx.components, cfg_batch=config.cfg_batch)
    result = engine.edit(EditRequest(image=ctx.image, prompt=PROMPT, negative_prompt="", width=size, height=size,
                                     num_inference_steps=steps, guidance_scale=guidance, seed=ctx.args.seed,
                                     speed_preset=preset))
    return result.pixels


def rebuild_quantized(ctx: Context, config=None) -> None:
    """Quantization is irreversible: rebuild the quantized parts with the same seed (same weights). ``config``
    says what was asked for, so a quantization that failed half-way is rebuilt too."""
    from longcat.models.precision import is_quantized

    c = ctx.components
    asked = config is not None and config.quantization is not None
    if is_quantized(c.transformer) or asked:
        c.transformer = None
        _cleanup(ctx.device)
        c.transformer = build_transformer(ctx.dims, ctx.device, ctx.dtype, ctx.args.seed)
    if is_quantized(c.text_encoder) or (asked and config.quantize_text_encoder):
        c.text_encoder = None
        _cleanup(ctx.device)
        c.text_encoder = build_text_encoder(ctx.dims, c.tokenizer, ctx.device, ctx.dtype, ctx.args.seed)


def measure_config(ctx: Context, row: Row, config, warm_shapes: list[tuple[int, float]] | None = None,
                   ref: str | None = None, preset: str = "exact") -> torch.Tensor | None:
    """Apply ``config``, warm up, time one edit of ``row``'s setting, undo. Failures become the row's status."""
    from longcat.engine.levers import LeverUnavailable, apply_speed_config

    if ctx.over_budget():
        row.status = "skipped (time budget)"
        return None
    applied = None
    pixels = None
    inductor = _inductor_config()
    try:
        t0 = time.perf_counter()
        try:
            applied = apply_speed_config(ctx.components, config)
        except LeverUnavailable as exc:
            row.status = f"n/a: {exc.reason}"
            return None
        row.note = "; ".join(filter(None, [row.note] + applied.notes))
        for steps, guidance in warm_shapes or [(1, row.guidance)]:
            ours_edit(ctx, config, steps, guidance, row.size)
        _sync(ctx.device)
        row.setup_s = time.perf_counter() - t0
        pixels = timed_edit(ctx, lambda: ours_edit(ctx, config, row.steps, row.guidance, row.size, preset), row)
        if ref:
            row.diff, row.diff_ref = _diff(pixels, ctx.pixels.get(ref)), ref
            row.psnr_db = _psnr(pixels, ctx.pixels.get(ref))
    except torch.OutOfMemoryError:
        row.status = "OOM"
    except Exception as exc:  # noqa: BLE001 - a failing lever is a result, not the end of the run
        row.status = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
        traceback.print_exc()
    finally:
        if applied is not None:
            try:
                applied.undo()
            except Exception:  # noqa: BLE001 - quantization: rebuild below
                pass
        rebuild_quantized(ctx, config)
        _restore_inductor_config(inductor)  # torchao's configs retune torch.compile process-wide by default
        _cleanup(ctx.device)
    return pixels


def _inductor_config():
    try:
        import torch._inductor.config as config

        return config.get_config_copy()
    except Exception:  # noqa: BLE001 - only a guard against a lever's side effects
        return None


def _restore_inductor_config(saved) -> None:
    if saved is not None:
        import torch._inductor.config as config

        config.load_config(saved)


# --- sections ------------------------------------------------------------------------------------------------


def section_main(ctx: Context, report) -> None:
    from longcat.engine.levers import SpeedConfig

    a = ctx.args
    default, tuned = SpeedConfig(), SpeedConfig.for_device(ctx.device)
    settings = [(f"{a.steps} steps, CFG {a.guidance:g}", a.steps, a.guidance),
                (f"Turbo: {a.turbo_steps} steps, no CFG", a.turbo_steps, 1.0)]
    # Warm-up: one short edit each (CUDA context, cuBLAS/cuDNN handles, allocator).
    diffusers_edit(ctx, 1, a.guidance)
    ours_edit(ctx, default, 1, a.guidance, a.size)
    for name, steps, guidance in settings:
        for impl, config in (("diffusers", None), ("ours", default)):
            row = Row("main", name, impl=impl, config="pipeline.__call__" if config is None else config.describe(),
                      size=a.size, steps=steps, guidance=guidance)
            report.add(row)
            if ctx.over_budget():
                row.status = "skipped (time budget)"
                continue
            try:
                run = (lambda: diffusers_edit(ctx, steps, guidance)) if config is None else \
                    (lambda: ours_edit(ctx, config, steps, guidance, a.size))
                pixels = timed_edit(ctx, run, row)
                key = f"{impl}:{name}"
                ctx.pixels[key] = pixels
                if impl == "ours":
                    row.diff, row.diff_ref = _diff(pixels, ctx.pixels.get(f"diffusers:{name}")), "diffusers"
            except torch.OutOfMemoryError:
                row.status = "OOM"
            report.write()
    # Ours with the per-device defaults: applied once, warmed up at both shapes (compiles happen here); then the
    # step-cache presets on top of them at the full CFG setting (PSNR against the tuned exact edit).
    rows = []
    for name, steps, guidance in settings:
        rows.append((Row("main", name, impl="ours (tuned)", config=tuned.describe(), size=a.size, steps=steps,
                         guidance=guidance), "exact", steps, guidance))
    name0, steps0, guidance0 = settings[0]
    for preset in PRESET_ROWS:
        rows.append((Row("main", name0, impl=f"ours (tuned + {preset})", config=f"{tuned.describe()} + preset {preset}",
                         size=a.size, steps=steps0, guidance=guidance0), preset, steps0, guidance0))
    for row, *_ in rows:
        report.add(row)
    from longcat.engine.levers import LeverUnavailable, apply_speed_config

    applied = None
    try:
        t0 = time.perf_counter()
        applied = apply_speed_config(ctx.components, tuned)
        for _, steps, guidance in settings:
            ours_edit(ctx, tuned, 1, guidance, a.size)
        setup = time.perf_counter() - t0
        for row, preset, steps, guidance in rows:
            if "attention_backend" in applied.applied:
                row.config = f"{row.config} (backend: {applied.applied['attention_backend']})"
            if ctx.over_budget():
                row.status = "skipped (time budget)"
                continue
            row.setup_s = setup
            pixels = timed_edit(ctx, lambda: ours_edit(ctx, tuned, steps, guidance, a.size, preset), row)
            if preset == "exact":
                ctx.pixels[f"tuned:{row.label}"] = pixels
                row.diff, row.diff_ref = _diff(pixels, ctx.pixels.get(f"diffusers:{row.label}")), "diffusers"
            else:
                exact = ctx.pixels.get(f"tuned:{row.label}")
                row.diff, row.diff_ref, row.psnr_db = _diff(pixels, exact), "tuned exact", _psnr(pixels, exact)
            report.write()
    except LeverUnavailable as exc:
        for row, *_ in rows:
            row.status = f"n/a: {exc.reason}"
    except Exception as exc:  # noqa: BLE001
        for row, *_ in rows:
            if row.edit_s is None:
                row.status = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
        traceback.print_exc()
    finally:
        if applied is not None:
            applied.undo()
        _cleanup(ctx.device)
    report.write()


PRESET_ROWS = ("fast", "taylor")


def _speed_levers(ctx: Context) -> list[tuple[str, dict, bool]]:
    """(label, SpeedConfig changes, expensive). Expensive rows (compiles, quantizing) run after the memory
    section, so a tight time budget drops them rather than the memory figures."""
    from longcat.engine.levers import SpeedConfig

    cuda = ctx.device.type == "cuda"
    backends = ["_native_cudnn", "_native_flash", "_native_efficient", "flash", "_flash_3"] if cuda \
        else ["_native_math"]
    levers = [("cfg_batch off (two CFG forwards)", dict(cfg_batch=False), False)]
    levers += [(f"attention_backend={b}", dict(attention_backend=b), False) for b in backends]
    levers += [("fuse_qkv", dict(fuse_qkv=True), False),
               # per-request step caches (diffusers hooks, longcat/engine/caching.py): PSNR vs the exact baseline
               ("speed_preset=fast (FirstBlockCache)", dict(speed_preset="fast"), False),
               ("speed_preset=taylor (TaylorSeer)", dict(speed_preset="taylor"), False),
               # irreversible (the transformer is rebuilt after each)
               ("fp8-dynamic (torchao fp8 matmuls)", dict(quantization="fp8-dynamic"), False),
               ("compile (regional, repeated blocks)", dict(compile=True), True),
               ("tuned: SpeedConfig.for_device", dataclasses.asdict(SpeedConfig.for_device(ctx.device)), True),
               ("fp8-dynamic + compile + fuse_qkv", dict(quantization="fp8-dynamic", compile=True, fuse_qkv=True),
                True),
               ("int8-quanto (transformer)", dict(quantization="int8-quanto"), True)]
    return levers


def section_levers(ctx: Context, report, expensive: bool = False) -> None:
    from longcat.engine.levers import SpeedConfig

    a = ctx.args
    if not expensive:
        base = Row("levers", "baseline: ours, default levers", impl="ours", config=SpeedConfig().describe(),
                   size=a.lever_size, steps=a.lever_steps, guidance=a.guidance)
        report.add(base)
        ctx.pixels["lever-baseline"] = measure_config(ctx, base, SpeedConfig())
        report.write()
    for label, changes, costly in _speed_levers(ctx):
        if costly != expensive:
            continue
        changes = dict(changes)
        preset = changes.pop("speed_preset", "exact")
        config = SpeedConfig().replace(**changes)
        row = Row("levers", label, impl="ours", config=config.describe() + ("" if preset == "exact" else
                                                                          f" + preset {preset}"),
                  size=a.lever_size, steps=a.lever_steps, guidance=a.guidance)
        report.add(row)
        if config.compile and ctx.device.type != "cuda" and not a.compile_on_cpu:
            row.status = "skipped: compile on CPU takes ~30 s per shape even at tiny dims (--compile-on-cpu)"
        else:
            measure_config(ctx, row, config, ref="lever-baseline", preset=preset)
        report.write()


def scheduler_edits(ctx: Context, batch: int, steps: int, guidance: float, size: int) -> torch.Tensor:
    """``batch`` edits (seeds differ) through the step scheduler: encode each, denoise together, decode each."""
    from longcat.conditioning import prepare_reference
    from longcat.engine import EditEngine, EditRequest
    from longcat.engine.denoise import DenoiseJob
    from longcat.engine.step_scheduler import SchedulerBounds, StepJob, StepScheduler

    engine = EditEngine(ctx.components)
    sched = StepScheduler(engine.loop, None, SchedulerBounds(max_inflight=batch, max_batch_tokens=1 << 30))
    jobs = []
    for i in range(batch):
        req = engine.validate(EditRequest(image=ctx.image, prompt=PROMPT, negative_prompt="", width=size,
                                          height=size, num_inference_steps=steps, guidance_scale=guidance,
                                          seed=ctx.args.seed + i))
        ref = prepare_reference(req.image, req.geometry)
        emb = engine.encode(req, ref.prompt_image)
        reference = engine.loop.encode_reference(ref.pixels)
        jobs.append(sched.admit(StepJob(DenoiseJob(emb.prompt, emb.negative, reference, req.geometry, steps,
                                                   guidance, req.seed))))
    sched.run_all()
    return torch.cat([engine.loop.decode(j.latents, j.job.geometry) for j in jobs])


def section_batch(ctx: Context, report) -> None:
    a = ctx.args
    for setting, steps, guidance in (("standard", a.lever_steps, a.guidance), ("turbo", a.turbo_steps, 1.0)):
        for batch in (1, 2, 4):
            row = Row("batch", f"{setting}, batch {batch}", impl="step scheduler", config=f"{batch} jobs in flight",
                      size=a.batch_size, steps=steps, guidance=guidance)
            report.add(row)
            if ctx.over_budget():
                row.status = "skipped (time budget)"
                continue
            try:
                scheduler_edits(ctx, batch, steps, guidance, a.batch_size)  # warm-up
                timed_edit(ctx, lambda: scheduler_edits(ctx, batch, steps, guidance, a.batch_size), row)
                row.note = f"{batch} edits; per image {row.edit_s / batch:.3f} s"
            except torch.OutOfMemoryError:
                row.status = "OOM"
            except Exception as exc:  # noqa: BLE001 - a failing row is a result
                row.status = f"failed: {type(exc).__name__}: {str(exc)[:160]}"
                traceback.print_exc()
            finally:
                _cleanup(ctx.device)
            report.write()


def section_memory(ctx: Context, report) -> None:
    from longcat.engine.levers import SpeedConfig

    a = ctx.args
    tile = 512 if ctx.dims.name == "real" else 64
    s = a.lever_size
    smaller = [max(64, round(s * f / 16) * 16) for f in (0.75, 0.5)]
    levers: list[tuple[str, dict, int]] = [
        ("baseline: all resident", {}, s),
        (f"vae_tiling ({tile} px tiles)", dict(vae_tiling=True, vae_tile_size=tile), s),
        ("model_cpu_offload (text encoder, transformer)", dict(model_cpu_offload=True), s),
        ("group_offload (transformer blocks; text encoder offloaded)", dict(group_offload=True), s),
        ("group_offload + vae_tiling", dict(group_offload=True, vae_tiling=True, vae_tile_size=tile), s),
        (f"request {smaller[0]}x{smaller[0]}", {}, smaller[0]),
        (f"request {smaller[1]}x{smaller[1]}", {}, smaller[1]),
        ("int8-quanto (transformer + text encoder)", dict(quantization="int8-quanto", quantize_text_encoder=True), s),
        ("fp8-torchao weight-only (transformer + text encoder)",
         dict(quantization="fp8-torchao", quantize_text_encoder=True), s),
    ]
    for label, changes, size in levers:
        config = SpeedConfig().replace(**changes)
        row = Row("memory", label, impl="ours", config=config.describe(), size=size, steps=a.lever_steps,
                  guidance=a.guidance)
        report.add(row)
        ref = "memory-baseline" if size == s else None
        pixels = measure_config(ctx, row, config, ref=ref if changes else None)
        if not changes and size == s:
            ctx.pixels["memory-baseline"] = pixels
        report.write()


# --- multi-device ---------------------------------------------------------------------------------------------


def _parallel_job(dims: Dims, size: int, steps: int, guidance: float, text_tokens: int, dtype, seed: int):
    from longcat.conditioning import Geometry
    from longcat.engine.denoise import DenoiseJob

    g = torch.Generator().manual_seed(seed)
    geometry = Geometry(size, size)
    dim = dims.transformer["joint_attention_dim"]
    neg = torch.randn(1, text_tokens, dim, generator=g).to(dtype) if guidance > 1 else None
    return DenoiseJob(torch.randn(1, text_tokens, dim, generator=g).to(dtype), neg,
                      torch.randn(1, geometry.image_seq_len, 64, generator=g).to(dtype), geometry, steps, guidance,
                      seed)


def _denoise_loop(transformer, cfg_batch: bool):
    from longcat.engine.denoise import DenoiseLoop
    from longcat.models.tiny import _scheduler

    return DenoiseLoop(transformer, None, _scheduler(), cfg_batch=cfg_batch)


def _timed_run(loop, job, device) -> tuple[float, torch.Tensor]:
    _sync(device)
    t0 = time.perf_counter()
    out = loop.run(job)
    _sync(device)
    return time.perf_counter() - t0, out.float().cpu()


def _parallel_rank(rank: int, world: int, port: int, layout: str, tiny: bool, dtype, seed: int, job_args: tuple,
                   results) -> None:
    """One rank of a multi-device denoise (spawned): rank 0 times the job, the others follow it."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import torch.distributed as dist

    try:
        from longcat.engine.parallel import Parallel, ParallelLayout, follow, init_from_env, stop_followers

        init_from_env()
        device = torch.device("cuda", rank) if torch.cuda.is_available() else torch.device("cpu")
        dims = _tiny_dims() if tiny else REAL
        loop = _denoise_loop(build_transformer(dims, device, dtype, seed), cfg_batch=False)
        loop.parallel = Parallel(loop.transformer, ParallelLayout.parse(layout, world))
        if rank:
            follow(loop)
            return
        job = _parallel_job(dims, *job_args, dtype, seed)
        loop.run(dataclasses.replace(job, steps=1))  # warm-up (NCCL communicators, kernels)
        seconds, out = _timed_run(loop, job, device)
        stop_followers(loop)
        results.put(("ok", seconds, out.numpy()))
    except BaseException:  # noqa: BLE001 - reported by the parent
        results.put(("error", traceback.format_exc()[-2000:], None))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def section_parallel(ctx: Context, report) -> None:
    """CFG-parallel and Ulysses across the visible GPUs (CPU: 2 gloo ranks), denoise only, vs one device."""
    import multiprocessing as mp
    import socket

    a = ctx.args
    cuda = ctx.device.type == "cuda"
    world = torch.cuda.device_count() if cuda else 2
    layouts = ["cfg=2", f"ulysses={world}"] + ([f"cfg=2,ulysses={world // 2}"] if world >= 4 else [])
    steps, size, text_tokens = a.lever_steps, a.lever_size, a.parallel_text_tokens
    job_args = (size, steps, a.guidance, text_tokens)
    base = Row("parallel", "one device (ours, two CFG forwards)", impl="ours", config="1 rank", size=size,
               steps=steps, guidance=a.guidance)
    report.add(base)
    loop = _denoise_loop(ctx.components.transformer, cfg_batch=False)
    job = _parallel_job(ctx.dims, *job_args, ctx.dtype, a.seed)
    loop.run(dataclasses.replace(job, steps=1))
    base.denoise_s, single = _timed_run(loop, job, ctx.device)
    base.per_step_s = base.denoise_s / steps
    report.write()
    for layout in layouts:
        row = Row("parallel", f"{layout} over {world} {'GPUs' if cuda else 'gloo ranks'}", impl="ours",
                  config=layout, size=size, steps=steps, guidance=a.guidance)
        report.add(row)
        if world < 2:
            row.status = "n/a: needs 2+ GPUs"
            continue
        if ctx.over_budget():
            row.status = "skipped (time budget)"
            continue
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        mpc = mp.get_context("spawn")
        results = mpc.Queue()
        procs = [mpc.Process(target=_parallel_rank, args=(r, world, port, layout, ctx.dims.name == "tiny", ctx.dtype,
                                                          a.seed, job_args, results), daemon=True)
                 for r in range(world)]
        for p in procs:
            p.start()
        try:
            kind, seconds, out = results.get(timeout=a.parallel_timeout_s)
            if kind != "ok":
                row.status = f"failed: {seconds.strip().splitlines()[-1][:160]}"
                print(seconds, file=sys.stderr)
            else:
                row.denoise_s, row.per_step_s = seconds, seconds / steps
                row.diff, row.diff_ref = float((torch.from_numpy(out) - single).abs().max()), "one device (latents)"
                row.note = f"{base.denoise_s / seconds:.2f}× vs one device"
        except Exception as exc:  # noqa: BLE001 - a queue timeout: the ranks hung
            row.status = f"failed: {type(exc).__name__} (no result in {a.parallel_timeout_s:.0f} s)"
        finally:
            for p in procs:
                p.join(30)
                if p.is_alive():
                    p.kill()
        report.write()


# --- report --------------------------------------------------------------------------------------------------


def _f(v, fmt="{:.3f}", none="–"):
    return none if v is None else fmt.format(v)


def _c(text) -> str:
    """A markdown table cell: no pipes, no newlines."""
    return str(text).replace("|", "\\|").replace("\n", " ")


class Report:
    def __init__(self, ctx: Context, out: Path, json_out: Path | None):
        self.ctx, self.out, self.json_out = ctx, out, json_out
        self._printed: set[int] = set()

    def add(self, row: Row) -> None:
        self.ctx.rows.append(row)

    def _rows(self, section):
        return [r for r in self.ctx.rows if r.section == section]

    def markdown(self) -> str:
        ctx, h = self.ctx, self.ctx.header
        lines = [f"# LongCat edit benchmark: {h['dims']} dims on {h['device']}", ""]
        lines += [f"- {k}: {v}" for k, v in h.items() if k not in ("dims", "device")]
        lines += [f"- elapsed: {time.perf_counter() - ctx.started:.0f} s", ""]
        main = self._rows("main")
        if main:
            lines += ["## diffusers vs our engine (same components, inputs and seed)", "",
                      "| setting | implementation | levers | steps | forwards × batch | tokens/forward | per-step s | "
                      "denoise s | whole edit s | MFU denoise | MFU edit | peak GPU GiB | speed-up vs diffusers | "
                      "max abs Δ px vs diffusers (presets: vs tuned exact) | PSNR dB | status |",
                      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
            for r in main:
                ref = next((x for x in main if x.label == r.label and x.impl == "diffusers"), None)
                speedup = ref.edit_s / r.edit_s if ref and ref.edit_s and r.edit_s and r is not ref else None
                lines.append(f"| {_c(r.label)} | {r.impl} | {_c(r.config)} | {r.steps} | {r.forwards} × {r.batch} | "
                             f"{r.tokens or '–'} | {_f(r.per_step_s, '{:.4f}')} | {_f(r.denoise_s, '{:.2f}')} | "
                             f"{_f(r.edit_s, '{:.2f}')} | {_f(r.mfu, '{:.1%}')} | {_f(r.mfu_edit, '{:.1%}')} | "
                             f"{_f(r.peak_gib, '{:.1f}')} | {_f(speedup, '{:.2f}×')} | {_f(r.diff, '{:.1e}')} | "
                             f"{_f(r.psnr_db, '{:.1f}')} | {_c(r.status)} |")
            lines.append("")
        batch_rows = self._rows("batch")
        if batch_rows:
            lines += ["## Step scheduler: edits sharing each forward", "",
                      "| setting | size | steps | CFG | forwards × rows | per-step s | whole batch s | per image s | "
                      "per image vs batch 1 | peak GPU GiB | status |", "|---|---|---|---|---|---|---|---|---|---|---|"]
            for r in batch_rows:
                n = int(r.label.rsplit(" ", 1)[-1])
                one = next((x for x in batch_rows if x.label == r.label.rsplit(",", 1)[0] + ", batch 1"), None)
                per = r.edit_s / n if r.edit_s else None
                ratio = (one.edit_s / per) if one and one.edit_s and per else None
                lines.append(f"| {_c(r.label)} | {r.size} | {r.steps} | {r.guidance:g} | {r.forwards} × {r.batch} | "
                             f"{_f(r.per_step_s, '{:.4f}')} | {_f(r.edit_s, '{:.2f}')} | {_f(per, '{:.3f}')} | "
                             f"{_f(ratio, '{:.2f}× faster')} | {_f(r.peak_gib, '{:.1f}')} | {_c(r.status)} |")
            lines.append("")
        for section, title in (("levers", "Speed levers (ours; each on its own against the baseline)"),
                               ("memory", "Memory levers (ours; the quickstart's OOM advice)"),
                               ("parallel", "One denoiser across devices (denoise only; Δ = latents vs one device)")):
            rows = self._rows(section)
            if not rows:
                continue
            base = rows[0]
            lines += [f"## {title}", "",
                      f"{base.steps} steps, CFG {base.guidance:g}, {base.size}×{base.size} unless the lever says "
                      "otherwise; setup = applying the lever + one warm-up edit (compiles happen there).", "",
                      "| lever | config | size | per-step s | vs baseline | whole edit s | MFU denoise | "
                      "peak GPU GiB | vs baseline | setup s | max abs Δ px vs baseline | PSNR dB | status | note |",
                      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
            for r in rows:
                speed = base.per_step_s / r.per_step_s if base.per_step_s and r.per_step_s else None
                mem = r.peak_gib / base.peak_gib if base.peak_gib and r.peak_gib else None
                lines.append(f"| {_c(r.label)} | {_c(r.config)} | {r.size} | {_f(r.per_step_s, '{:.4f}')} | "
                             f"{_f(speed, '{:.2f}× speed')} | {_f(r.edit_s, '{:.2f}')} | {_f(r.mfu, '{:.1%}')} | "
                             f"{_f(r.peak_gib, '{:.1f}')} | {_f(mem, '{:.2f}× mem')} | {_f(r.setup_s, '{:.1f}')} | "
                             f"{_f(r.diff, '{:.1e}')} | {_f(r.psnr_db, '{:.1f}')} | {_c(r.status)} | {_c(r.note)} |")
            lines.append("")
        return "\n".join(lines)

    def write(self) -> None:
        for r in self.ctx.rows:  # progress for the log: each row once, when it is done
            if id(r) not in self._printed and (r.edit_s is not None or r.status != "ok"):
                self._printed.add(id(r))
                print(f"[{time.perf_counter() - self.ctx.started:6.0f} s] {r.section} | {r.label} | {r.impl} | "
                      f"{r.status} | per-step {_f(r.per_step_s, '{:.4f}')} s | edit {_f(r.edit_s, '{:.2f}')} s | "
                      f"MFU {_f(r.mfu, '{:.1%}')} | peak {_f(r.peak_gib, '{:.1f}')} GiB", flush=True)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(self.markdown())
        if self.json_out:
            payload = {"header": self.ctx.header, "rows": [dataclasses.asdict(r) for r in self.ctx.rows]}
            self.json_out.write_text(json.dumps(payload, indent=1, default=str))


# --- main ----------------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="markdown table to write (rewritten after every row)")
    p.add_argument("--json", help="raw results as JSON (default: --out with .json)")
    p.add_argument("--tiny", action="store_true", help="tiny dims (the CPU test); default: the real model's dims")
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="bf16 | fp16 | fp32 (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--size", type=int, default=1024, help="output side for the diffusers comparison (its ~1 MP)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=4.5)
    p.add_argument("--turbo-steps", type=int, default=8)
    p.add_argument("--lever-steps", type=int, default=None, help="steps per lever row (default 5; tiny 2)")
    p.add_argument("--lever-size", type=int, default=None, help="side for lever rows (default --size; tiny 256)")
    p.add_argument("--sections", default="main,levers,memory,batch,parallel")
    p.add_argument("--batch-size", type=int, default=512, help="side of the step scheduler's batch rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1, help="timed edits per row; the fastest is kept")
    p.add_argument("--budget-s", type=float, default=450.0,
                   help="rows that would start after this many seconds are skipped (0 = no limit)")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's dense peak, for MFU")
    p.add_argument("--compile-on-cpu", action="store_true")
    p.add_argument("--parallel-text-tokens", type=int, default=None,
                   help="prompt tokens of the parallel rows' random embeddings (default 838 real, 15 tiny)")
    p.add_argument("--parallel-timeout-s", type=float, default=600.0)
    args = p.parse_args(argv)
    if args.lever_steps is None:
        args.lever_steps = 2 if args.tiny else 5
    if args.lever_size is None:
        args.lever_size = 256 if args.tiny else args.size
    if args.parallel_text_tokens is None:
        args.parallel_text_tokens = 15 if args.tiny else 838
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
        args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dims = _tiny_dims() if args.tiny else REAL
    if not args.tiny and device.type != "cuda":
        print("warning: real dims on a CPU take hours; use --tiny", file=sys.stderr)

    import diffusers
    import transformers

    t0 = time.perf_counter()
    components = build_components(dims, device, dtype, args.seed)
    _sync(device)
    build_s = time.perf_counter() - t0
    peak, peak_text = peak_flops(device, args.peak_tflops)
    ctx = Context(args, dims, device, dtype, components, input_image(args.size, args.seed), peak, peak_text)

    # Token counts of the real request shape, and the ideal time of the headline edit at the peak.
    from longcat.conditioning import Geometry, prepare_reference
    from longcat.conditioning.prompt import PromptEncoder

    geometry = Geometry(args.size, args.size)
    ref = prepare_reference(ctx.image, geometry)
    with torch.no_grad():
        text_tokens = PromptEncoder(components.tokenizer, components.text_processor.image_processor,
                                    components.text_encoder).encode(PROMPT, ref.prompt_image).shape[1]
    image_tokens = 2 * geometry.image_seq_len
    fwd = transformer_flops(components.transformer.config, 1, text_tokens, image_tokens)
    edit_flops = fwd * args.steps * 2
    ctx.header = {
        "dims": dims.name,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]) if argv is None else "main(" + " ".join(argv) + ")",
        "versions": f"torch {torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}, python {platform.python_version()}",
        "dtype": str(dtype).replace("torch.", ""),
        "parameters": f"transformer {_si(param_count(components.transformer), '')}, text encoder "
                      f"{_si(param_count(components.text_encoder), '')}, VAE {_si(param_count(components.vae), '')} "
                      f"(random weights, built on {device.type} in {build_s:.1f} s)",
        "tokens per transformer forward": f"{text_tokens + image_tokens} = {text_tokens} text/vision + "
                                          f"{image_tokens // 2} noisy + {image_tokens // 2} reference ({args.size}×{args.size})",
        "FLOPs per forward (batch 1)": f"{_si(fwd, 'FLOP')}; {args.steps} steps with CFG = {_si(edit_flops, 'FLOP')}",
        "peak": peak_text + (f"; ideal {args.steps}-step CFG denoise = {edit_flops / peak:.2f} s" if peak else ""),
    }
    report = Report(ctx, Path(args.out), Path(args.json) if args.json else Path(args.out).with_suffix(".json"))
    report.write()
    wanted = {name.strip() for name in args.sections.split(",")}
    unknown = wanted - {"main", "levers", "memory", "batch", "parallel"}
    if unknown:
        raise SystemExit(f"unknown sections: {', '.join(sorted(unknown))}")
    # Run order: the comparison, cheap levers, memory, then the levers that compile or quantize.
    plan = [("main", section_main, {}), ("levers", section_levers, {"expensive": False}),
            ("memory", section_memory, {}), ("batch", section_batch, {}),
            ("levers", section_levers, {"expensive": True}), ("parallel", section_parallel, {})]
    for name, run, kwargs in plan:
        if name not in wanted:
            continue
        try:
            run(ctx, report, **kwargs)
        except Exception as exc:  # noqa: BLE001 - keep what was measured, say what broke, go on
            traceback.print_exc()
            report.add(Row(name, f"section stopped: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
                           status="failed"))
            _cleanup(device)
    report.write()
    print(report.markdown())
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
    sys.exit(main())
