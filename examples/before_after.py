"""The README's before/after picture from a ``make demo`` run: the input, the tiny model's edit, and the edit
with the adapter the demo trained, each labelled with what it honestly is.

    python examples/before_after.py --demo-output demo-output --out docs/tiny-model-edit.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo-output", default="demo-output", help="the folder `make demo` wrote")
    ap.add_argument("--out", default="docs/tiny-model-edit.png", help="where to write the picture")
    args = ap.parse_args()
    demo = Path(args.demo_output)
    panels = [
        (ROOT / "examples" / "sample.png", "before: examples/sample.png"),
        (demo / "edit.png", "tiny model, \"make the sky purple\""),
        (demo / "edit-with-adapter.png", "+ LoRA trained 60 steps, \"invert the colors\""),
    ]
    try:
        font = ImageFont.load_default(size=13)
    except TypeError:
        font = ImageFont.load_default()
    w, h, pad, head, foot = 256, 192, 8, 24, 40
    canvas = Image.new("RGB", (pad + len(panels) * (w + pad), head + h + foot), "white")
    d = ImageDraw.Draw(canvas)
    for i, (path, label) in enumerate(panels):
        x = pad + i * (w + pad)
        canvas.paste(Image.open(path).convert("RGB").resize((w, h)), (x, head))
        d.text((x, 5), label, fill=(20, 20, 20), font=font)
    d.text((pad, head + h + 6), "The tiny model has RANDOM weights: it shows the machinery (input -> gateway -> "
           "encoder -> denoiser -> PNG,", fill=(150, 20, 20), font=font)
    d.text((pad, head + h + 22), "LoRA training, adapters by name), not the real model's edits. 256x192, 8 steps, "
           "seed 42, CPU.", fill=(150, 20, 20), font=font)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    canvas.quantize(colors=96).save(args.out, optimize=True)  # palette PNG: small enough to commit
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
