"""Sigma schedules: inference (linspace + dynamic shift, as the pipeline) and training (shifted logit-normal)."""

from __future__ import annotations

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


def shift_sigmas(sigmas: torch.Tensor, mu: float, scheduler_config) -> torch.Tensor:
    """The scheduler's own ``time_shift(mu, 1.0, sigmas)`` (exponential or linear, as its config says), as
    Meituan's edit-LoRA script calls it: no copy of the formula to drift from the one inference uses."""
    return _scheduler(scheduler_config).time_shift(mu, 1.0, sigmas)


def sample_training_sigmas(batch: int, image_seq_len: int, scheduler_config, generator=None,
                           device=None) -> torch.Tensor:
    """Meituan's edit LoRA recipe: sigma = shift(sigmoid(N(0, 1))) with the same dynamic shift as inference."""
    u = torch.randn(batch, generator=generator, device="cpu").sigmoid()
    return shift_sigmas(u, shift_mu(image_seq_len, scheduler_config), scheduler_config).to(device)


_SCHEDULERS: dict[str, object] = {}


def _scheduler(scheduler_config):
    """A scheduler built from ``scheduler_config`` (a config, or a scheduler itself), one per distinct config."""
    if hasattr(scheduler_config, "time_shift"):
        return scheduler_config
    from diffusers import FlowMatchEulerDiscreteScheduler

    key = repr(sorted(dict(scheduler_config).items()))
    if key not in _SCHEDULERS:
        _SCHEDULERS[key] = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
    return _SCHEDULERS[key]
