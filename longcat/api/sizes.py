"""Output size rules: the ~1 MP default keeping the reference's aspect, multiples of 16, the pixel limit.

``calculate_dimensions`` is a small copy of diffusers' (``pipeline_longcat_image_edit``), so the gateway can
resolve sizes without importing diffusers; ``tests/test_api.py`` holds it equal to the original.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from longcat.errors import InvalidArgument

MULTIPLE = 16  # VAE factor 8 x 2x2 packing
DEFAULT_AREA = 1024 * 1024


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


def calculate_dimensions(target_area, ratio):
    """diffusers' rule, verbatim: the area at this aspect ratio, each side rounded up to a multiple of 16."""
    width = math.sqrt(target_area * ratio)
    height = width / ratio
    width = width if width % 16 == 0 else (width // 16 + 1) * 16
    height = height if height % 16 == 0 else (height // 16 + 1) * 16
    return int(width), int(height)


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
