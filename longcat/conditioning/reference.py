"""Reference image -> (VAE pixels, the half-size image the VLM sees) -> packed reference latents.

Also the inverse: packed latents -> pixels. Resizing goes through diffusers' ``VaeImageProcessor`` with the
pipeline's settings, so serving, training and the library agree to the last pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

from longcat.conditioning.geometry import Geometry, pack_latents, unpack_latents

# vae_scale_factor 8 x 2 for packing, as the pipeline constructs it.
_IMAGE_PROCESSOR = VaeImageProcessor(vae_scale_factor=16)


@dataclass
class PreparedReference:
    pixels: torch.Tensor        # (1, 3, H, W) in [-1, 1], what the VAE encodes
    prompt_image: Image.Image   # (W/2, H/2), what Qwen2.5-VL sees


def prepare_reference(image: Image.Image, geometry: Geometry) -> PreparedReference:
    """Resize to the output size (and to half of it for the VLM) exactly as the pipeline does."""
    resized = _IMAGE_PROCESSOR.resize(image, geometry.height, geometry.width)
    pixels = _IMAGE_PROCESSOR.preprocess(resized, geometry.height, geometry.width)
    return PreparedReference(pixels=pixels, prompt_image=_half(resized, geometry))


def reference_prompt_image(image: Image.Image, geometry: Geometry) -> Image.Image:
    """Only what the encoder needs: the reference at half the output size (same two resizes)."""
    return _half(_IMAGE_PROCESSOR.resize(image, geometry.height, geometry.width), geometry)


def reference_pixels(image: Image.Image, geometry: Geometry) -> torch.Tensor:
    """Only what the denoiser needs: the reference at the output size, in [-1, 1]."""
    resized = _IMAGE_PROCESSOR.resize(image, geometry.height, geometry.width)
    return _IMAGE_PROCESSOR.preprocess(resized, geometry.height, geometry.width)


def _half(resized: Image.Image, geometry: Geometry) -> Image.Image:
    # From the already resized image, not the original: that is what the pipeline feeds the VLM.
    return _IMAGE_PROCESSOR.resize(resized, geometry.height // 2, geometry.width // 2)


def vae_encode(vae, pixels: torch.Tensor) -> torch.Tensor:
    """Pixels -> normalized latents: the posterior's mode (not a sample), then (z - shift) * scale."""
    pixels = pixels.to(device=vae.device, dtype=vae.dtype)
    z = vae.encode(pixels).latent_dist.mode()
    return (z - vae.config.shift_factor) * vae.config.scaling_factor


def encode_reference_latents(vae, pixels: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Pixels -> packed (1, N, 64) reference latents, appended after the noisy tokens."""
    z = vae_encode(vae, pixels)
    return pack_latents(z.to(dtype or z.dtype))


def decode_latents(vae, packed: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """Packed latents -> images (B, 3, H, W) in [0, 1] as float32."""
    z = unpack_latents(packed, geometry)
    z = (z / vae.config.scaling_factor + vae.config.shift_factor).to(vae.dtype)
    image = vae.decode(z, return_dict=False)[0]
    return _IMAGE_PROCESSOR.denormalize(image).float()


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [0, 1] -> PIL images, rounded as the pipeline's postprocess rounds."""
    arr = images.detach().cpu().permute(0, 2, 3, 1).numpy()
    return [Image.fromarray((a * 255).round().astype(np.uint8)) for a in arr]
