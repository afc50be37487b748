"""The edit request, its limits, and the validation every entry point runs before any work is queued."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from PIL import Image

from longcat.api.bounds import DEFAULT_MAX_PROMPT_CHARS, check_image_bytes, check_prompt_chars
from longcat.api.presets import check_preset
from longcat.api.sizes import DEFAULT_AREA, Geometry, check_size, default_size
from longcat.errors import InvalidArgument
from longcat.images import DEFAULT_MAX_INPUT_PIXELS, decode_image, to_rgb


@dataclass(frozen=True)
class Limits:
    """Operator-configurable bounds on a request (flags / env on the services)."""

    max_pixels: int = 2048 * 2048          # output size
    max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS  # decoded reference size
    max_steps: int = 200
    max_guidance: float = 30.0
    max_adapters: int = 8
    min_side: int = 64
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS  # each of prompt / negative_prompt, before tokenizing
    max_image_bytes: int = 0               # encoded reference size; 0 = no limit (the gateway sets one)


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
    speed_preset: str = "exact"      # a step-cache preset (longcat.engine.caching.PRESETS)


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
    speed_preset: str = "exact"

    @property
    def do_cfg(self) -> bool:
        # Same rule as the pipeline: guidance <= 1 means a single conditional forward.
        return self.guidance_scale > 1.0


MAX_SEED = 2**63 - 1


def check_prompt(prompt, field: str = "prompt", required: bool = True) -> str:
    if not isinstance(prompt, str) or (required and not prompt.strip()):
        raise InvalidArgument("must be a non-empty instruction" if required else "must be a string", field)
    return prompt


def check_steps(steps, limits: Limits, field: str = "num_inference_steps") -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0 or steps > limits.max_steps:
        raise InvalidArgument(f"must be between 1 and {limits.max_steps}, got {steps}", field)
    return steps


def check_guidance(g, limits: Limits, field: str = "guidance_scale") -> float:
    if not isinstance(g, (int, float)) or not math.isfinite(g) or g < 0 or g > limits.max_guidance:
        raise InvalidArgument(f"must be a number between 0 and {limits.max_guidance}, got {g}", field)
    return float(g)


def resolve_seed(seed, field: str = "seed") -> int:
    """None or -1 -> a fresh random seed (reported back); else 0..2^63-1."""
    if seed is None or seed == -1:
        return random.SystemRandom().randrange(MAX_SEED)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0 or seed > MAX_SEED:
        raise InvalidArgument(f"must be between 0 and {MAX_SEED} (or -1 for random), got {seed}", field)
    return seed


def check_adapters(adapters, limits: Limits, field: str = "adapters") -> list[AdapterRef]:
    from longcat.api.names import validate_adapter_ref

    if len(adapters) > limits.max_adapters:
        raise InvalidArgument(f"at most {limits.max_adapters} adapters per request, got {len(adapters)}", field)
    for i, ref in enumerate(adapters):
        validate_adapter_ref(ref.name, field=f"{field}[{i}].name")
        if isinstance(ref.scale, bool) or not isinstance(ref.scale, (int, float)) or not math.isfinite(ref.scale):
            raise InvalidArgument(f"must be a finite number, got {ref.scale}", f"{field}[{i}].scale")
    return list(adapters)


def resolve_image(image, limits: Limits, field: str = "image") -> Image.Image:
    if isinstance(image, Image.Image):
        return to_rgb(image, field=field)
    if limits.max_image_bytes:
        check_image_bytes(image, field, limits.max_image_bytes)
    return decode_image(image, field=field, max_pixels=limits.max_input_pixels)


def resolve_geometry(width: int, height: int, image_size: tuple[int, int], limits: Limits) -> Geometry:
    """0 x 0 -> ~1 MP keeping the reference's aspect (or less where the pixel limit is lower); else checked."""
    width, height = width or 0, height or 0
    if (width == 0) != (height == 0):
        raise InvalidArgument("give both width and height, or neither (0 = model default)",
                              "height" if height == 0 else "width")
    if width == 0:
        width, height = default_size(*image_size, area=min(DEFAULT_AREA, limits.max_pixels))
    check_size(width, height, limits.max_pixels, limits.min_side)
    return Geometry(width=width, height=height)


def validate_request(req: EditRequest, limits: Limits = Limits()) -> ValidatedRequest:
    """Check every field; raise :class:`InvalidArgument` naming the first field at fault."""
    check_prompt_chars(req.prompt, "prompt", limits.max_prompt_chars)  # before anything reads them
    check_prompt_chars(req.negative_prompt, "negative_prompt", limits.max_prompt_chars)
    prompt = check_prompt(req.prompt)
    negative = check_prompt(req.negative_prompt or "", "negative_prompt", required=False)
    steps = check_steps(req.num_inference_steps, limits)
    guidance = check_guidance(req.guidance_scale, limits)
    seed = resolve_seed(req.seed)
    adapters = check_adapters(req.adapters, limits)
    preset = check_preset(req.speed_preset)
    image = resolve_image(req.image, limits)
    geometry = resolve_geometry(req.width, req.height, image.size, limits)
    return ValidatedRequest(image=image, prompt=prompt, negative_prompt=negative, geometry=geometry,
                            num_inference_steps=steps, guidance_scale=guidance, seed=seed, adapters=adapters,
                            truncate_prompt=bool(req.truncate_prompt), speed_preset=preset)
