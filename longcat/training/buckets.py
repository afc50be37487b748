"""Aspect buckets on the 64-px grid, and the one crop both images of a pair go through.

A bucket is a (width, height) pair of multiples of 64 whose area is close to the dataset's target area and
whose aspect is close to the image's (the 64-px grid cannot match both exactly; see :func:`bucket_for`). The edit image picks the bucket; its reference is resized and
center-cropped by the same function to the same bucket, so the pair stays pixel-aligned (for equal-size
pairs the two transforms are identical).
"""

from __future__ import annotations

import functools
import math

from PIL import Image

ALIGNMENT = 64
MEGAPIXEL = 1024 * 1024


def target_area(width: int, height: int, resolution: float, resolution_type: str = "pixel_area") -> float:
    """The pixel area a dataset's ``resolution`` asks for (SimpleTuner's three resolution types)."""
    if resolution_type == "area":
        return resolution * MEGAPIXEL                     # megapixels
    if resolution_type == "pixel":
        short, long = sorted((width, height))
        return resolution * resolution * long / short    # shorter side = resolution
    return resolution * resolution                        # pixel_area: same area as a square of that side


@functools.lru_cache(maxsize=4096)
def bucket_for(width: int, height: int, resolution: float, resolution_type: str = "pixel_area",
               alignment: int = ALIGNMENT) -> tuple[int, int]:
    """The (W, H) bucket for a ``width`` x ``height`` image: multiples of ``alignment`` with the best trade of
    aspect (weighted double: a wrong aspect crops content away) against area (the dataset's target)."""
    area = target_area(width, height, resolution, resolution_type)
    aspect = width / height
    best = None
    widest = max(2 * alignment, 2 * math.sqrt(area * max(aspect, 1 / aspect)))
    for w in range(alignment, int(widest) + alignment, alignment):
        # The best height for this width is near the area-preserving one or the aspect-preserving one.
        for exact in (area / w / alignment, w / aspect / alignment):
            for rows in {max(1, math.floor(exact)), max(1, math.ceil(exact))}:
                h = rows * alignment
                score = 2 * abs(math.log(w / h / aspect)) + abs(math.log(w * h / area))
                key = (round(score, 9), -w * h, w)
                if best is None or key < best[0]:
                    best = (key, (w, h))
    return best[1]


def fit_to_bucket(image: Image.Image, bucket: tuple[int, int]) -> Image.Image:
    """Resize to cover ``bucket`` keeping the aspect, then center-crop to exactly ``bucket``."""
    bw, bh = bucket
    w, h = image.size
    if (w, h) == (bw, bh):
        return image.copy()
    scale = max(bw / w, bh / h)
    nw, nh = max(bw, math.ceil(w * scale - 1e-9)), max(bh, math.ceil(h * scale - 1e-9))
    resized = image.resize((nw, nh), Image.Resampling.LANCZOS) if (nw, nh) != (w, h) else image
    left, top = (nw - bw) // 2, (nh - bh) // 2
    return resized.crop((left, top, left + bw, top + bh))
