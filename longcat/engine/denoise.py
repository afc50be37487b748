"""The denoiser side of an edit: reference latents, the denoise loop, decoding.

Our own loop (diffusers' edit pipeline has no size control, step callback or LoRA), built from diffusers'
components and held to ``LongCatImageEditPipeline.__call__`` by the parity test.
"""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor

from longcat.conditioning import (
    Geometry,
    decode_latents,
    encode_reference_latents,
    image_position_ids,
    pack_latents,
    predict_velocity,
    set_inference_timesteps,
    text_position_ids,
    unpack_latents,
)
from longcat.engine.batch_invariance import batch_invariant, wanted
from longcat.engine.caching import EXACT, branch_context, step_cache
from longcat.engine.levers import execution_device
from longcat.errors import Cancelled

LATENT_CHANNELS = 16


@dataclass
class StepEvent:
    """Progress after a finished step (1-based ``step`` of ``total``)."""

    step: int
    total: int
    elapsed_s: float
    eta_s: float
    preview: torch.Tensor | None = None  # (1, 3, h, w) in [0, 1], small, when asked for


StepCallback = Callable[[StepEvent], None]


@dataclass
class DenoiseJob:
    """Everything the loop needs; the embeddings come from the encoder (in-process or over gRPC)."""

    prompt_embeds: torch.Tensor                 # (1, L, D)
    negative_embeds: torch.Tensor | None        # (1, L, D), None = no CFG
    reference_latents: torch.Tensor             # (1, N, 64) packed
    geometry: Geometry
    steps: int
    guidance_scale: float
    seed: int
    speed_preset: str = EXACT                   # a step-cache preset (longcat.engine.caching), for this run only


class DenoiseLoop:
    """Hosts transformer + VAE + scheduler. One call at a time uses the modules (a lock guards them)."""

    def __init__(self, transformer, vae, scheduler, cfg_batch: bool = True):
        self.transformer = transformer
        self.vae = vae
        self.scheduler = scheduler
        self.cfg_batch = cfg_batch  # CFG as one batch-2 forward (faster; twice the activation memory)
        self.parallel = None  # a longcat.engine.parallel.Parallel when this loop spans several devices
        self.batch_invariant = True  # longcat.engine.batch_invariance, where it holds (CPU); False: bench baseline
        self.lock = threading.RLock()

    @property
    def device(self) -> torch.device:
        # Where the transformer computes, also while its weights are offloaded (longcat.engine.levers).
        return execution_device(self.transformer)

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    @torch.no_grad()
    def encode_reference(self, pixels: torch.Tensor) -> torch.Tensor:
        with self.lock:
            return encode_reference_latents(self.vae, pixels, dtype=self.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, geometry: Geometry) -> torch.Tensor:
        with self.lock:
            return decode_latents(self.vae, latents, geometry)

    def initial_noise(self, geometry: Geometry, seed: int, dtype: torch.dtype) -> torch.Tensor:
        # Seeded on the CPU, so a seed gives the same image on any device (as the pipeline with a CPU generator).
        h, w = geometry.latent_hw
        gen = torch.Generator("cpu").manual_seed(seed)
        noise = randn_tensor((1, LATENT_CHANNELS, h, w), generator=gen, device=self.device, dtype=dtype)
        return pack_latents(noise)

    @torch.no_grad()
    def run(self, job: DenoiseJob, on_step: StepCallback | None = None, cancel: threading.Event | None = None,
            preview_every: int = 0, preview_max_side: int = 128) -> torch.Tensor:
        """Denoise from seeded noise to packed latents; raises :class:`Cancelled` between steps when asked."""
        # Batch-invariant linears, as the step scheduler's: a job alone gives what it gives in any batch.
        with self.lock, step_cache(self.transformer, job.speed_preset, job.steps), \
                batch_invariant(self.transformer, self.batch_invariant and wanted(self.device)):
            if self.parallel is not None and self.parallel.is_leader:
                self.parallel.share_job(job)  # the followers run the same job in lockstep
            return self._run(job, on_step, cancel, preview_every, preview_max_side)

    def _run(self, job, on_step, cancel, preview_every, preview_max_side):
        dtype = job.prompt_embeds.dtype
        device = self.device
        geometry = job.geometry
        scheduler = copy.deepcopy(self.scheduler)  # the scheduler is stateful; never share one between calls
        timesteps = set_inference_timesteps(scheduler, job.steps, geometry.image_seq_len, device)

        cond = job.prompt_embeds.to(device)
        do_cfg = job.negative_embeds is not None
        text_len = cond.shape[1]
        text_ids = text_position_ids(text_len, device)
        image_ids = image_position_ids(geometry, text_len, device)
        reference = job.reference_latents.to(device, dtype)
        latents = self.initial_noise(geometry, job.seed, dtype)

        parallel = self.parallel
        cfg_split = parallel is not None and parallel.layout.cfg == 2 and do_cfg
        batched = do_cfg and self.cfg_batch and not cfg_split
        if batched:
            embeds = torch.cat([cond, job.negative_embeds.to(device)])
            reference_in = reference.expand(2, -1, -1)

        start = time.perf_counter()
        for i, t in enumerate(timesteps):
            stop = cancel is not None and cancel.is_set()
            if parallel is not None:  # every rank takes the leader's decision
                stop = not parallel.agree_continue(stop)
            if stop:
                raise Cancelled(f"cancelled before step {i + 1} of {len(timesteps)}")
            sigma = t.expand(1).to(dtype) / 1000
            if cfg_split:
                def branch(embeds_, name=("cond", "uncond")[parallel.cfg_rank]):
                    with branch_context(self.transformer, name):
                        return predict_velocity(self.transformer, latents, reference, embeds_, text_ids, image_ids,
                                                sigma)

                v_cond, v_uncond = parallel.cfg_velocities(branch, cond, job.negative_embeds.to(device))
                v = v_uncond + job.guidance_scale * (v_cond - v_uncond)
            elif batched:
                with branch_context(self.transformer, "cfg"):
                    v = predict_velocity(self.transformer, latents.expand(2, -1, -1), reference_in, embeds,
                                         text_ids, image_ids, sigma.expand(2))
                v_cond, v_uncond = v.chunk(2)
                v = v_uncond + job.guidance_scale * (v_cond - v_uncond)
            else:
                with branch_context(self.transformer, "cond"):
                    v = predict_velocity(self.transformer, latents, reference, cond, text_ids, image_ids, sigma)
                if do_cfg:
                    with branch_context(self.transformer, "uncond"):
                        v_uncond = predict_velocity(self.transformer, latents, reference,
                                                    job.negative_embeds.to(device), text_ids, image_ids, sigma)
                    v = v_uncond + job.guidance_scale * (v - v_uncond)
            noisy = latents
            latents = scheduler.step(v, t, latents, return_dict=False)[0]
            if on_step is not None:
                elapsed = time.perf_counter() - start
                done = i + 1
                preview = None
                if preview_every and (done % preview_every == 0 or done == len(timesteps)):
                    preview = self._preview(noisy - sigma * v, geometry, preview_max_side)
                try:
                    on_step(StepEvent(step=done, total=len(timesteps), elapsed_s=elapsed,
                                      eta_s=elapsed / done * (len(timesteps) - done), preview=preview))
                except BaseException:
                    if parallel is not None and done < len(timesteps):
                        parallel.agree_continue(True)  # the followers wait at the next step: stop them too
                    raise
        return latents

    def _preview(self, x0: torch.Tensor, geometry: Geometry, max_side: int) -> torch.Tensor:
        """A cheap look at the current estimate: the predicted clean latents x0 = x_t - sigma * v,
        downsampled in latent space and decoded (a fraction of a full decode's cost)."""
        z = unpack_latents(x0, geometry)
        scale = max(1, max(geometry.width, geometry.height) // max_side)
        if scale > 1:
            z = F.interpolate(z.float(), scale_factor=1 / scale, mode="bilinear").to(z.dtype)
            z = z[..., : z.shape[-2] // 2 * 2, : z.shape[-1] // 2 * 2]
        small = Geometry(width=z.shape[-1] * 8, height=z.shape[-2] * 8)
        return decode_latents(self.vae, pack_latents(z), small)
