"""The transformer call, identical for a denoise step and a training step."""

from __future__ import annotations

import torch


def predict_velocity(transformer, noisy: torch.Tensor, reference: torch.Tensor, prompt_embeds: torch.Tensor,
                     text_ids: torch.Tensor, image_ids: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Velocity for the noisy tokens only.

    ``noisy`` (B, N, 64) and ``reference`` (B, N, 64) are joined along the sequence, as the model was trained;
    ``sigma`` (B,) is in [0, 1] (the transformer scales it by 1000 itself). The reference part of the output
    is dropped.
    """
    tokens = noisy.shape[1]
    out = transformer(
        hidden_states=torch.cat([noisy, reference], dim=1),
        timestep=sigma,
        encoder_hidden_states=prompt_embeds,
        txt_ids=text_ids,
        img_ids=image_ids,
        return_dict=False,
    )[0]
    return out[:, :tokens]
