"""One training step: Meituan's edit-LoRA flow-matching loss through the shared conditioning code.

sigma = shift(sigmoid(N(0, 1))), x_t = (1 - sigma) x0 + sigma eps, target = eps - x0, MSE over the noisy
tokens. The model call is :func:`longcat.conditioning.predict_velocity` with the same position ids as a
denoise step, so training and serving cannot drift apart. All randomness comes from one CPU generator
(saved in checkpoints), so a step is reproducible on any device.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from longcat.api.training_errors import TrainingFailed
from longcat.conditioning import image_position_ids, predict_velocity, sample_training_sigmas, text_position_ids
from longcat.training.data import Batch


@dataclass
class TrainState:
    """Everything a checkpoint must capture to continue bit-exactly."""

    transformer: torch.nn.Module
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    lr_scheduler: object
    generator: torch.Generator          # noise, sigmas, caption dropout
    step: int = 0                       # optimizer steps done
    losses: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class StepSettings:
    scheduler_config: object            # the flow-matching scheduler's config (dynamic shift)
    device: torch.device
    dtype: torch.dtype                  # compute dtype of the base weights
    caption_dropout: float = 0.0
    max_grad_norm: float = 1.0
    autocast_bf16: bool = False         # GPU only


def make_optimizer(params, config) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                             weight_decay=config.adam_weight_decay, eps=config.adam_epsilon)


def make_lr_scheduler(optimizer, config, total_steps: int):
    from diffusers.optimization import get_scheduler

    return get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=config.lr_warmup_steps,
                         num_training_steps=total_steps)


def flow_matching_loss(transformer, batch: Batch, s: StepSettings, generator: torch.Generator) -> torch.Tensor:
    b = batch.edit.shape[0]
    # Draw in a fixed order (dropout, sigma, noise) whatever the settings, so runs stay comparable.
    drop = torch.rand(b, generator=generator) < s.caption_dropout
    embeds = batch.prompt_embeds
    if drop.any():
        if batch.empty_embeds is None:
            raise TrainingFailed("caption dropout needs the empty-prompt embeddings, which were not cached")
        embeds = torch.where(drop[:, None, None], batch.empty_embeds, embeds)
    sigma = sample_training_sigmas(b, batch.geometry.image_seq_len, s.scheduler_config, generator=generator)
    noise = torch.randn(batch.edit.shape, generator=generator, dtype=torch.float32)

    x0 = batch.edit.float()
    sig = sigma.view(b, 1, 1).float()
    noisy = (1.0 - sig) * x0 + sig * noise
    target = (noise - x0).to(s.device)

    text_len = embeds.shape[1]
    text_ids = text_position_ids(text_len, s.device)
    image_ids = image_position_ids(batch.geometry, text_len, s.device)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if s.autocast_bf16 else contextlib.nullcontext())
    with autocast:
        pred = predict_velocity(transformer, noisy.to(s.device, s.dtype), batch.reference.to(s.device, s.dtype),
                                embeds.to(s.device, s.dtype), text_ids, image_ids, sigma.to(s.device, s.dtype))
    return F.mse_loss(pred.float(), target)


def train_step(state: TrainState, batch: Batch, s: StepSettings) -> tuple[float, float]:
    """One optimizer step; returns (loss, learning rate used)."""
    state.optimizer.zero_grad(set_to_none=True)
    loss = flow_matching_loss(state.transformer, batch, s, state.generator)
    if not torch.isfinite(loss):
        raise TrainingFailed(f"loss became {loss.item()} at step {state.step + 1} (batch {batch.names}); lower "
                             "learning_rate or check the data")
    loss.backward()
    if s.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(state.params, s.max_grad_norm)
    lr = float(state.lr_scheduler.get_last_lr()[0])
    state.optimizer.step()
    state.lr_scheduler.step()
    state.step += 1
    value = float(loss.item())
    state.losses.append(value)
    return value, lr


@torch.no_grad()
def evaluation_loss(transformer, dataset, s: StepSettings, seed: int = 0, repeats: int = 4) -> float:
    """Mean loss over every sample with fixed noise and sigmas: a smooth curve to compare checkpoints by
    (the training loss is dominated by which sigma each step happens to draw)."""
    generator = torch.Generator().manual_seed(seed)
    was_training = transformer.training
    transformer.eval()
    try:
        total = [flow_matching_loss(transformer, dataset.batch([i]), s, generator).item()
                 for _ in range(repeats) for i in range(len(dataset))]
    finally:
        transformer.train(was_training)
    return sum(total) / len(total)
