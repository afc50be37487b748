"""Output size, latent packing and rotary position ids: pure tensor math shared by serving and training.

The size rule, packing and position ids follow ``LongCatImageEditPipeline`` exactly; where diffusers has
the function we import it rather than copy it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.pipelines.longcat_image.pipeline_longcat_image_edit import (
    calculate_dimensions,
    prepare_pos_ids,
)

from longcat.errors import InvalidArgument

MULTIPLE = 16  # VAE factor 8 x 2x2 packing
DEFAULT_AREA = 1024 * 1024
TEXT_MODALITY, NOISY_MODALITY, REFERENCE_MODALITY = 0, 1, 2


@dataclass(frozen=True)
class Geometry:
    """Pixel size of the output and the matching latent/token grid."""

    width: int
    height: int
    vae_scale_factor: int = 8

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.height // self.vae_scale_factor, self.width // self.vae_scale_factor

    @property
    def token_hw(self) -> tuple[int, int]:
        h, w = self.latent_hw
        return h // 2, w // 2

    @property
    def image_seq_len(self) -> int:
        h, w = self.token_hw
        return h * w


def default_size(image_width: int, image_height: int, area: int = DEFAULT_AREA) -> tuple[int, int]:
    """The pipeline's own default: ~1 MP keeping the reference's aspect, rounded up to multiples of 16."""
    width, height = calculate_dimensions(area, image_width * 1.0 / image_height)
    if area < DEFAULT_AREA and width * height > area:  # rounding up overshot a lowered limit: round down
        width, height = width - MULTIPLE, height - MULTIPLE
    return width, height


def check_size(width: int, height: int, max_pixels: int, min_side: int = 64) -> None:
    for name, v in (("width", width), ("height", height)):
        if v % MULTIPLE:
            raise InvalidArgument(f"must be a multiple of {MULTIPLE}, got {v}", name)
        if v < min_side:
            raise InvalidArgument(f"must be at least {min_side}, got {v}", name)
    if width * height > max_pixels:
        raise InvalidArgument(f"{width}x{height} = {width * height} pixels is over the limit of {max_pixels}",
                              "width")


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
