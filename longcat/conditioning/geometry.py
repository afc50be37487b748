"""Output size, latent packing and rotary position ids: pure tensor math shared by serving and training.

Packing and position ids follow ``LongCatImageEditPipeline`` exactly; where diffusers has the function we
import it rather than copy it. The size rule lives in :mod:`longcat.api.sizes` (held equal to diffusers').
"""

from __future__ import annotations

import torch
from diffusers.pipelines.longcat_image.pipeline_longcat_image_edit import prepare_pos_ids

# The size rules are the contract layer's (torch-free, so the gateway resolves sizes without diffusers).
from longcat.api.sizes import DEFAULT_AREA, MULTIPLE, Geometry, check_size, default_size  # noqa: F401

TEXT_MODALITY, NOISY_MODALITY, REFERENCE_MODALITY = 0, 1, 2


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, 4C): the 2x2 patchify the transformer reads."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(packed: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """(B, N, 4C) -> (B, C, H, W), the inverse of :func:`pack_latents`."""
    b, _, ch = packed.shape
    h, w = geometry.latent_hw
    x = packed.view(b, h // 2, w // 2, ch // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, ch // 4, h, w)


def position_dtype(device, dtype: torch.dtype) -> torch.dtype:
    """The dtype position ids take on ``device``: as the pipeline builds them, except on Apple MPS, which has
    no float64 (the quickstart's troubleshooting: "pos-ids are lowered to float32 on MPS")."""
    if device is not None and torch.device(device).type == "mps" and dtype == torch.float64:
        return torch.float32
    return dtype


def _place(ids: torch.Tensor, device, dtype: torch.dtype | None = None) -> torch.Tensor:
    return ids.to(dtype=position_dtype(device, dtype or ids.dtype)).to(device)


def text_position_ids(num_tokens: int, device=None) -> torch.Tensor:
    """Text tokens sit on the diagonal: (0, i, i)."""
    return _place(prepare_pos_ids(modality_id=TEXT_MODALITY, type="text", start=(0, 0), num_token=num_tokens),
                  device)


def image_position_ids(geometry: Geometry, text_len: int, device=None) -> torch.Tensor:
    """Noisy tokens (1, L+r, L+c) followed by reference tokens (2, L+r, L+c), offset past the text."""
    th, tw = geometry.token_hw
    start = (text_len, text_len)
    noisy = prepare_pos_ids(modality_id=NOISY_MODALITY, type="image", start=start, height=th, width=tw)
    ref = prepare_pos_ids(modality_id=REFERENCE_MODALITY, type="image", start=start, height=th, width=tw)
    # The pipeline builds the reference ids in float64 and concatenates: keep that promotion for parity.
    return torch.cat([_place(noisy, device), _place(ref, device, torch.float64)], dim=0)
