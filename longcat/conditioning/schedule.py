"""Sigma schedules: inference (linspace + dynamic shift, as the pipeline) and training (shifted logit-normal)."""

from __future__ import annotations

import math

import numpy as np
import torch
from diffusers.pipelines.longcat_image.pipeline_longcat_image_edit import calculate_shift


def shift_mu(image_seq_len: int, scheduler_config) -> float:
    """The dynamic-shift exponent for ``image_seq_len`` noisy tokens, from the scheduler's own config."""
    get = scheduler_config.get
    return calculate_shift(image_seq_len, get("base_image_seq_len", 256), get("max_image_seq_len", 4096),
                           get("base_shift", 0.5), get("max_shift", 1.15))


def set_inference_timesteps(scheduler, steps: int, image_seq_len: int, device) -> torch.Tensor:
    """Configure ``scheduler`` for ``steps`` steps the way ``LongCatImageEditPipeline`` does; return timesteps."""
    sigmas = np.linspace(1.0, 1.0 / steps, steps)
    scheduler.set_timesteps(sigmas=sigmas, device=device, mu=shift_mu(image_seq_len, scheduler.config))
    return scheduler.timesteps


def shift_sigmas(sigmas: torch.Tensor, mu: float) -> torch.Tensor:
    """The flow-matching time shift exp(mu) / (exp(mu) + (1/s - 1)), as the scheduler applies it."""
    return math.exp(mu) / (math.exp(mu) + (1.0 / sigmas - 1.0))


def sample_training_sigmas(batch: int, image_seq_len: int, scheduler_config, generator=None,
                           device=None) -> torch.Tensor:
    """Meituan's edit LoRA recipe: sigma = shift(sigmoid(N(0, 1))) with the same dynamic shift as inference."""
    u = torch.randn(batch, generator=generator, device="cpu").sigmoid()
    return shift_sigmas(u, shift_mu(image_seq_len, scheduler_config)).to(device)
