"""The quality gate: a speed preset serves only after its drift from ``exact`` was measured and found in bounds.

``measure_presets`` renders a fixed probe set (seeded reference images and prompts) with ``exact`` and with each
preset, on the loaded model and optionally an adapter, and reports PSNR / SSIM of each preset's output against
the exact one (LPIPS needs a pretrained network; none is available offline, so it is reported as ``None``).
The result is a :class:`QualityRecord` (JSON) keyed by the model's fingerprint and the adapter set.
:class:`PresetGate` reads that record in the denoiser and refuses a preset whose recorded worst-case PSNR is
under the configured bound, or that has no record for this model and adapter set (a lever proves itself first).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from longcat.api.presets import EXACT, check_preset
from longcat.errors import InvalidArgument

DEFAULT_MIN_PSNR_DB = 30.0   # the bar for the cache preset on the real model
PROBE_PROMPTS = ("make the sky purple", "turn the cat into a dog", "add a red hat", "write hello on the blackboard")


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1] (inf when identical)."""
    mse = F.mse_loss(x.double(), ref.double()).item()
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def ssim(x: torch.Tensor, ref: torch.Tensor, window: int = 11, sigma: float = 1.5) -> float:
    """Structural similarity (Wang et al. 2004; Gaussian window, per channel, mean) of (N, C, H, W) in [0, 1]."""
    x, ref = x.double(), ref.double()
    c = x.shape[1]
    g = torch.exp(-((torch.arange(window, dtype=torch.float64) - window // 2) ** 2) / (2 * sigma ** 2))
    g = (g / g.sum())
    kernel = (g[:, None] * g[None, :]).expand(c, 1, window, window).contiguous()
    pad = window // 2

    def blur(t):
        return F.conv2d(F.pad(t, (pad,) * 4, mode="reflect"), kernel, groups=c)

    mu_x, mu_y = blur(x), blur(ref)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(ref * ref) - mu_y ** 2
    cov = blur(x * ref) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return s.mean().item()


def model_fingerprint(transformer) -> str:
    """Identifies the loaded transformer (its config and a checksum of a few weights), not its file path."""
    h = hashlib.sha256(json.dumps(dict(transformer.config), sort_keys=True, default=str).encode())
    for i, p in enumerate(transformer.parameters()):
        if i >= 4:
            break
        h.update(repr(round(float(p.detach().double().sum()), 6)).encode())
    return h.hexdigest()[:16]


def adapter_key(names) -> str:
    """Which adapter set a measurement holds for ('' = none)."""
    return "+".join(sorted(names))


def probe_images(n: int, seed: int = 0) -> list[Image.Image]:
    """A fixed probe set: smooth seeded colour fields with an edge (not white noise, which no cache can track)."""
    rng = np.random.RandomState(seed)
    out = []
    for _ in range(n):
        yy, xx = np.mgrid[0:192, 0:256] / 255.0
        a, b, c = rng.rand(3, 3)
        img = np.stack([a[i] * xx + b[i] * yy + c[i] * (xx > 0.5) for i in range(3)], -1)
        out.append(Image.fromarray((np.clip(img / img.max(), 0, 1) * 255).astype("uint8")))
    return out


@dataclass
class QualityRecord:
    model: str                                                    # model_fingerprint
    entries: dict[str, dict[str, dict]] = field(default_factory=dict)  # adapter key -> preset -> figures

    def drift(self, preset: str, adapters: str) -> dict | None:
        return self.entries.get(adapters, {}).get(preset)

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps({"model": self.model, "entries": self.entries}, indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "QualityRecord":
        raw = json.loads(Path(path).read_text())
        return cls(model=raw["model"], entries=raw.get("entries", {}))


class PresetGate:
    """Refuses a non-exact preset unless its recorded worst PSNR against exact, for this model and adapter set,
    is at least ``min_psnr_db``."""

    def __init__(self, record: QualityRecord | None, model: str, min_psnr_db: float = DEFAULT_MIN_PSNR_DB):
        self.record = record if record is not None and record.model == model else None
        self.stale = record is not None and self.record is None
        self.min_psnr_db = min_psnr_db

    @classmethod
    def from_file(cls, path: str | None, transformer, min_psnr_db: float = DEFAULT_MIN_PSNR_DB) -> "PresetGate":
        record = QualityRecord.load(path) if path and Path(path).exists() else None
        return cls(record, model_fingerprint(transformer), min_psnr_db)

    def check(self, preset: str, adapters=(), field: str = "speed_preset") -> str:
        preset = check_preset(preset, field)
        if preset == EXACT:
            return preset
        key = adapter_key(adapters)
        if self.record is None:
            why = "was measured on another model" if self.stale else "has no quality record on this denoiser"
            raise InvalidArgument(f"preset {preset!r} {why}; run `longcat quality` and pass --quality-record",
                                  field)
        figures = self.record.drift(preset, key)
        if figures is None:
            raise InvalidArgument(f"preset {preset!r} has no recorded drift for adapters "
                                  f"{key or '(none)'}; run `longcat quality` with them", field)
        if figures["psnr_db"] < self.min_psnr_db:
            raise InvalidArgument(f"preset {preset!r} drifts too far from exact here (recorded PSNR "
                                  f"{figures['psnr_db']:.1f} dB < bound {self.min_psnr_db:.1f} dB); use 'exact'",
                                  field)
        return preset


def measure_presets(engine, presets, adapters=(), probes: int = 2, steps: int = 20, size: int = 256,
                    guidance: float = 4.5) -> dict[str, dict]:
    """Render the probe set with ``exact`` and each preset on ``engine``; worst-case PSNR / SSIM per preset
    against exact, and the denoise time ratio."""
    from longcat.api.edit import AdapterRef, EditRequest

    def render(image, prompt, preset):
        req = EditRequest(image=image, prompt=prompt, width=size, height=size, num_inference_steps=steps,
                          guidance_scale=guidance, seed=1234, adapters=[AdapterRef(a) for a in adapters],
                          speed_preset=preset)
        result = engine.edit(req, gate=False)
        return result.pixels, result.timings["denoise_s"]

    inputs = list(zip(probe_images(probes), PROBE_PROMPTS * probes))[:probes]
    exact = [render(img, prompt, EXACT) for img, prompt in inputs]
    out = {}
    for preset in presets:
        preset = check_preset(preset, "presets")
        if preset == EXACT:
            continue
        rows = [render(img, prompt, preset) for img, prompt in inputs]
        out[preset] = {
            "psnr_db": min(psnr(p, e[0]) for (p, _), e in zip(rows, exact)),
            "ssim": min(ssim(p, e[0]) for (p, _), e in zip(rows, exact)),
            "lpips": None,  # no LPIPS network offline
            "speedup": sum(e[1] for e in exact) / max(sum(t for _, t in rows), 1e-9),
            "probes": probes, "steps": steps, "size": size, "measured_at": time.time(),
        }
    return out
