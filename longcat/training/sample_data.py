"""A small paired edit dataset to try training on: random colored shapes (references) and the same images
color-inverted (edits), captioned "invert the colors". Writes the quickstart's layout::

    <out>/edits/0000.png + 0000.txt      <out>/refs/0000.png

``python -m longcat.training.sample_data --out data`` matches ``config/dataloader.json.example``.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

CAPTION = "invert the colors"


def shapes_image(rng: random.Random, width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(2, 5)):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1, y1 = x0 + rng.randint(width // 6, width // 2), y0 + rng.randint(height // 6, height // 2)
        color = tuple(rng.randrange(256) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=color)
    return image


def write_pairs(out: str | Path, count: int = 8, size: tuple[int, int] = (64, 64), seed: int = 0,
                caption: str = CAPTION, transform=ImageOps.invert) -> tuple[Path, Path]:
    """Write ``count`` pairs; returns (edits folder, refs folder)."""
    out = Path(out)
    edits, refs = out / "edits", out / "refs"
    edits.mkdir(parents=True, exist_ok=True)
    refs.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for i in range(count):
        ref = shapes_image(rng, *size)
        ref.save(refs / f"{i:04d}.png")
        transform(ref).save(edits / f"{i:04d}.png")
        (edits / f"{i:04d}.txt").write_text(caption + "\n")
    return edits, refs


def quickstart_dataloader(edits: str | Path, refs: str | Path, cache_root: str | Path,
                          resolution: int = 64) -> list[dict]:
    """The quickstart's two linked datasets over ``edits`` and ``refs`` (as parsed JSON)."""
    cache_root = Path(cache_root)
    return [
        {"id": "edit-images", "type": "local", "instance_data_dir": str(edits), "caption_strategy": "textfile",
         "resolution": resolution, "cache_dir_vae": str(cache_root / "vae" / "edit"),
         "conditioning_data": ["ref-images"]},
        {"id": "ref-images", "type": "local", "instance_data_dir": str(refs), "caption_strategy": None,
         "resolution": resolution, "cache_dir_vae": str(cache_root / "vae" / "ref")},
    ]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="data")
    p.add_argument("--count", type=int, default=8)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    edits, refs = write_pairs(a.out, a.count, (a.size, a.size), a.seed)
    print(f"wrote {a.count} pairs: {edits} (edits + captions), {refs} (references)")


if __name__ == "__main__":
    main()
