"""The edit request, its limits, and the validation every entry point runs before any work is queued."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from PIL import Image

from longcat.conditioning.geometry import DEFAULT_AREA, Geometry, check_size, default_size
from longcat.errors import InvalidArgument
from longcat.images import DEFAULT_MAX_INPUT_PIXELS, decode_image

ADAPTER_NAME_FIELD = "adapters[{i}].name"


@dataclass(frozen=True)
class Limits:
    """Operator-configurable bounds on a request (flags / env on the services)."""

    max_pixels: int = 2048 * 2048          # output size
    max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS  # decoded reference size
    max_steps: int = 200
    max_guidance: float = 30.0
    max_adapters: int = 8
    min_side: int = 64


@dataclass
class AdapterRef:
    name: str
    scale: float = 1.0


@dataclass
class EditRequest:
    """What a client asks for. ``image`` may be raw bytes (PNG/JPEG/WebP) or a PIL image."""

    image: bytes | Image.Image
    prompt: str
    negative_prompt: str = ""
    width: int = 0                   # 0 = the model's default (~1 MP keeping the reference's aspect)
    height: int = 0
    num_inference_steps: int = 50
    guidance_scale: float = 4.5
    seed: int | None = None          # None = pick one (reported back)
    adapters: list[AdapterRef] = field(default_factory=list)
    truncate_prompt: bool = False    # over-long prompts: error (default) or truncate with a warning


@dataclass
class ValidatedRequest:
    """A request whose every field was checked; the image is decoded and the size resolved."""

    image: Image.Image
    prompt: str
    negative_prompt: str
    geometry: Geometry
    num_inference_steps: int
    guidance_scale: float
    seed: int
    adapters: list[AdapterRef]
    truncate_prompt: bool

    @property
    def do_cfg(self) -> bool:
        # Same rule as the pipeline: guidance <= 1 means a single conditional forward.
        return self.guidance_scale > 1.0


MAX_SEED = 2**63 - 1


def validate_request(req: EditRequest, limits: Limits = Limits()) -> ValidatedRequest:
    """Check every field; raise :class:`InvalidArgument` naming the first field at fault."""
    if not isinstance(req.prompt, str) or not req.prompt.strip():
        raise InvalidArgument("must be a non-empty instruction", "prompt")
    if not isinstance(req.negative_prompt, str):
        raise InvalidArgument("must be a string", "negative_prompt")
    steps = req.num_inference_steps
    if not isinstance(steps, int) or steps <= 0 or steps > limits.max_steps:
        raise InvalidArgument(f"must be between 1 and {limits.max_steps}, got {steps}", "num_inference_steps")
    g = req.guidance_scale
    if not isinstance(g, (int, float)) or math.isnan(g) or math.isinf(g) or g < 0 or g > limits.max_guidance:
        raise InvalidArgument(f"must be a number between 0 and {limits.max_guidance}, got {g}", "guidance_scale")
    seed = req.seed
    if seed is None or seed == -1:
        seed = random.SystemRandom().randrange(MAX_SEED)
    elif not isinstance(seed, int) or seed < 0 or seed > MAX_SEED:
        raise InvalidArgument(f"must be between 0 and {MAX_SEED} (or -1 for random), got {seed}", "seed")
    if len(req.adapters) > limits.max_adapters:
        raise InvalidArgument(f"at most {limits.max_adapters} adapters per request, got {len(req.adapters)}",
                              "adapters")
    for i, ref in enumerate(req.adapters):
        from longcat.adapters.store import validate_name

        validate_name(ref.name, field=ADAPTER_NAME_FIELD.format(i=i))
        if not isinstance(ref.scale, (int, float)) or not math.isfinite(ref.scale):
            raise InvalidArgument(f"must be a finite number, got {ref.scale}", f"adapters[{i}].scale")

    image = req.image if isinstance(req.image, Image.Image) else decode_image(
        req.image, field="image", max_pixels=limits.max_input_pixels)
    if isinstance(req.image, Image.Image):
        from longcat.images import to_rgb

        image = to_rgb(req.image, field="image")

    width, height = req.width or 0, req.height or 0
    if (width == 0) != (height == 0):
        raise InvalidArgument("give both width and height, or neither (0 = model default)",
                              "height" if height == 0 else "width")
    if width == 0:
        # ~1 MP keeping the reference's aspect, or less where the operator's pixel limit is lower.
        width, height = default_size(*image.size, area=min(DEFAULT_AREA, limits.max_pixels))
    check_size(width, height, limits.max_pixels, limits.min_side)
    return ValidatedRequest(
        image=image, prompt=req.prompt, negative_prompt=req.negative_prompt or "",
        geometry=Geometry(width=width, height=height), num_inference_steps=steps,
        guidance_scale=float(g), seed=int(seed), adapters=list(req.adapters), truncate_prompt=req.truncate_prompt,
    )
