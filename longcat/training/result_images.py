"""The pictures a person looks at after training: ``loss.png`` (loss per step) and ``validation/grid.png``
(reference | edit for each validation prompt, one row per validation step). Pillow only: a dependency we
already have draws a line chart well enough."""

from __future__ import annotations

import math
import os
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

LOSS_FILE = "loss.png"
GRID_FILE = "grid.png"  # inside the validation folder
BG, FG, GRID_LINE, RAW, SMOOTH = (255, 255, 255), (30, 30, 30), (225, 225, 225), (170, 190, 230), (20, 70, 180)


def _font(size: int = 12):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size font
        return ImageFont.load_default()


def _save(image: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def smooth(values: list[float], weight: float = 0.8) -> list[float]:
    """Exponential moving average (as TensorBoard's smoothing), debiased so the first points are not pulled
    towards zero."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight ** i))
    return out


def loss_plot(losses: list[float], size: tuple[int, int] = (640, 360)) -> Image.Image:
    """Raw loss per step (light) and its moving average (dark), with step and loss axes."""
    w, h = size
    left, right, top, bottom = 64, 16, 28, 40
    img = Image.new("RGB", size, BG)
    d = ImageDraw.Draw(img)
    font = _font()
    finite = [v for v in losses if math.isfinite(v)]
    d.text((left, 8), f"training loss ({len(losses)} steps; dark: moving average)", fill=FG, font=font)
    if not finite:
        d.text((left, h // 2), "no finite loss recorded", fill=FG, font=font)
        return img
    lo, hi = min(finite), max(finite)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    pw, ph = w - left - right, h - top - bottom

    def xy(i: int, v: float) -> tuple[float, float]:
        x = left + (i / max(1, len(losses) - 1)) * pw
        return x, top + (1 - (v - lo) / (hi - lo)) * ph

    for k in range(5):  # horizontal grid lines with loss labels
        v = lo + (hi - lo) * k / 4
        y = xy(0, v)[1]
        d.line([(left, y), (left + pw, y)], fill=GRID_LINE)
        d.text((4, y - 6), f"{v:.4g}", fill=FG, font=font)
    d.rectangle([left, top, left + pw, top + ph], outline=FG)
    for k in range(5):  # step labels
        step = round(1 + (len(losses) - 1) * k / 4)
        d.text((xy(step - 1, lo)[0] - 8, top + ph + 6), str(step), fill=FG, font=font)
    d.text((left + pw // 2 - 12, h - 16), "step", fill=FG, font=font)
    points = [xy(i, v) for i, v in enumerate(losses) if math.isfinite(v)]
    if len(points) > 1:
        d.line(points, fill=RAW, width=1)
        d.line([xy(i, v) for i, v in enumerate(smooth(finite))], fill=SMOOTH, width=2)
    else:
        d.ellipse([points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2], fill=SMOOTH)
    return img


def write_loss_plot(losses: list[float], path: str | os.PathLike) -> Path:
    return _save(loss_plot(losses), Path(path))


def validation_grid(references: list[Image.Image], captions: list[str],
                    rows: list[tuple[str, list[Image.Image]]], cell: int = 192) -> Image.Image:
    """Columns: reference | edit for each prompt; rows: one per label (e.g. "step 30") with its edits."""
    font = _font()
    pad, label_w, head_h = 6, 84, 34
    cols = 2 * len(references)
    img = Image.new("RGB", (label_w + cols * (cell + pad) + pad, head_h + len(rows) * (cell + pad) + pad), BG)
    d = ImageDraw.Draw(img)
    for j, caption in enumerate(captions):
        x = label_w + 2 * j * (cell + pad) + pad
        d.text((x, 4), _clip(f"prompt {j + 1}: {caption}", 2 * cell // 7), fill=FG, font=font)
        d.text((x, 18), "reference", fill=FG, font=font)
        d.text((x + cell + pad, 18), "edit", fill=FG, font=font)
    for i, (label, edits) in enumerate(rows):
        y = head_h + i * (cell + pad) + pad
        d.text((4, y + cell // 2 - 6), label, fill=FG, font=font)
        for j, ref in enumerate(references):
            x = label_w + 2 * j * (cell + pad) + pad
            img.paste(_fit(ref, cell), (x, y))
            if j < len(edits):
                img.paste(_fit(edits[j], cell), (x + cell + pad, y))
    return img


def _fit(image: Image.Image, cell: int) -> Image.Image:
    """Scaled to fit a cell (nearest: small renders stay crisp), centred on white."""
    image = image.convert("RGB")
    scale = cell / max(image.size)
    resized = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                           Image.NEAREST if scale >= 1 else Image.LANCZOS)
    out = Image.new("RGB", (cell, cell), BG)
    out.paste(resized, ((cell - resized.width) // 2, (cell - resized.height) // 2))
    return out


def _clip(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[: max(1, chars - 1)] + "…"


def write_validation_grid(references, captions, rows, path: str | os.PathLike) -> Path:
    return _save(validation_grid(references, captions, rows), Path(path))
