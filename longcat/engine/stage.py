"""The denoise stage: adapters -> reference latents -> denoise loop -> decode, composed once.

The in-process engine (and through it the trainer's validation renders), the denoiser's queue worker and
its gRPC ``Denoise`` all call :func:`run_denoise_stage`, so an edit is rendered the same way wherever it
runs. The stage takes one :class:`StageRequest` (one job's inputs, embeddings already computed): a step
scheduler running many jobs would build the same ``DenoiseJob``s from these requests and advance them
together through :class:`DenoiseLoop`; the per-job pieces (adapters, reference, decode) stay here.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
from PIL import Image

from longcat.api.presets import EXACT
from longcat.api.sizes import Geometry
from longcat.conditioning import reference_pixels
from longcat.engine.denoise import DenoiseJob, DenoiseLoop, StepCallback


@dataclass
class StageRequest:
    prompt_embeds: torch.Tensor
    negative_embeds: torch.Tensor | None       # None: no CFG (guidance <= 1)
    geometry: Geometry
    num_inference_steps: int
    guidance_scale: float
    seed: int
    image: Image.Image | None = None           # the reference, or its latents (one of the two)
    reference_latents: torch.Tensor | None = None
    reference: torch.Tensor | None = None      # or the reference already resized to pixels in [-1, 1]
    adapters: Sequence[tuple[str, float]] = ()
    speed_preset: str = EXACT                  # a step-cache preset, applied for this run only


@dataclass
class StageResult:
    latents: torch.Tensor
    pixels: torch.Tensor | None                # (1, 3, H, W) in [0, 1]; None when not decoded
    timings: dict[str, float] = field(default_factory=dict)  # reference_s, denoise_s, decode_s


def run_denoise_stage(loop: DenoiseLoop, adapters, req: StageRequest, *, on_step: StepCallback | None = None,
                      cancel: threading.Event | None = None, preview_every: int = 0,
                      decode: bool = True) -> StageResult:
    """One job through the stage. ``adapters``: an AdapterManager (or None: no adapters allowed)."""
    t0 = time.perf_counter()
    with _activate(adapters, req.adapters):
        reference = req.reference_latents
        if reference is None:
            pixels = req.reference if req.reference is not None else reference_pixels(req.image, req.geometry)
            reference = loop.encode_reference(pixels)
        t1 = time.perf_counter()
        negative = None if req.negative_embeds is None else req.negative_embeds.to(loop.dtype)
        job = DenoiseJob(req.prompt_embeds.to(loop.dtype), negative, reference, req.geometry,
                         req.num_inference_steps, req.guidance_scale, req.seed, req.speed_preset)
        latents = loop.run(job, on_step=on_step, cancel=cancel, preview_every=preview_every)
    t2 = time.perf_counter()
    pixels = loop.decode(latents, req.geometry) if decode else None
    t3 = time.perf_counter()
    return StageResult(latents, pixels, {"reference_s": t1 - t0, "denoise_s": t2 - t1, "decode_s": t3 - t2})


def _activate(adapters, refs):
    if adapters is None:
        if refs:
            from longcat.errors import AdapterNotFound

            raise AdapterNotFound("this engine has no adapter store", "adapters[0].name")
        return contextlib.nullcontext()
    return adapters.activate(list(refs))
