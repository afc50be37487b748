"""The in-process edit engine: encode -> denoise -> decode on one set of loaded components.

The services split the same stages across processes (encoder: :meth:`EditEngine.encode`'s work; denoiser:
the :class:`DenoiseLoop`), so a served edit and an in-process edit run identical code.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import torch
from PIL import Image

from longcat.api.edit import EditRequest, Limits, ValidatedRequest, validate_request
from longcat.api.model_defaults import read_model_defaults
from longcat.conditioning import PromptEncoder, prepare_reference, to_pil
from longcat.engine.denoise import DenoiseLoop, StepCallback
from longcat.engine.stage import StageRequest, run_denoise_stage
from longcat.models.loading import ALL_COMPONENTS, Components, load_components


@dataclass
class PromptEmbeddings:
    prompt: torch.Tensor
    negative: torch.Tensor | None  # None when guidance <= 1 (no CFG)


@dataclass
class EditResult:
    image: Image.Image
    pixels: torch.Tensor   # (1, 3, H, W) float in [0, 1], before 8-bit rounding
    width: int
    height: int
    seed: int
    timings: dict[str, float] = field(default_factory=dict)


class EditEngine:
    def __init__(self, components: Components, limits: Limits = Limits(), cfg_batch: bool = True,
                 adapter_manager=None):
        self.components = components
        self.limits = limits
        self.prompt_encoder = PromptEncoder(components.tokenizer, components.text_processor.image_processor,
                                            components.text_encoder)
        self.loop = DenoiseLoop(components.transformer, components.vae, components.scheduler, cfg_batch=cfg_batch)
        self.adapters = adapter_manager
        self.defaults = read_model_defaults(components.model_path)  # Edit-Turbo: 8 steps, no CFG
        self.gate = None  # a longcat.engine.quality_gate.PresetGate, when speed presets must prove themselves
        self._encode_lock = threading.Lock()

    @classmethod
    def load(cls, model: str | None = None, device: str | None = None, precision: str = "fp32",
             adapter_root: str | None = None, adapter_cache: int = 8, **kwargs) -> "EditEngine":
        components = load_components(model, ALL_COMPONENTS, device=device, precision=precision)
        from longcat.adapters import AdapterManager, AdapterStore

        store = AdapterStore(adapter_root) if adapter_root else None
        manager = AdapterManager(components.transformer, store, capacity=adapter_cache)
        return cls(components, adapter_manager=manager, **kwargs)

    def validate(self, request: EditRequest) -> ValidatedRequest:
        return validate_request(request, self.limits)

    def encode(self, req: ValidatedRequest, prompt_image: Image.Image) -> PromptEmbeddings:
        """Prompt and negative prompt, each seen with the same half-size reference."""
        with self._encode_lock, torch.no_grad():
            prompt = self.prompt_encoder.encode(req.prompt, prompt_image, "prompt", req.truncate_prompt)
            negative = None
            if req.do_cfg:
                negative = self.prompt_encoder.encode(req.negative_prompt, prompt_image, "negative_prompt",
                                                      req.truncate_prompt)
        return PromptEmbeddings(prompt, negative)

    def edit(self, request: EditRequest | ValidatedRequest, on_step: StepCallback | None = None,
             cancel: threading.Event | None = None, preview_every: int = 0, gate: bool = True) -> EditResult:
        req = request if isinstance(request, ValidatedRequest) else self.validate(request)
        if gate and self.gate is not None:
            self.gate.check(req.speed_preset, [a.name for a in req.adapters])
        t0 = time.perf_counter()
        ref = prepare_reference(req.image, req.geometry)
        embeds = self.encode(req, ref.prompt_image)
        t1 = time.perf_counter()
        stage = run_denoise_stage(self.loop, self.adapters, StageRequest(
            embeds.prompt, embeds.negative, req.geometry, req.num_inference_steps, req.guidance_scale, req.seed,
            reference=ref.pixels, adapters=[(a.name, a.scale) for a in req.adapters],
            speed_preset=req.speed_preset),
            on_step=on_step, cancel=cancel, preview_every=preview_every)
        pixels, t = stage.pixels, stage.timings
        t3 = time.perf_counter()
        return EditResult(
            image=to_pil(pixels)[0], pixels=pixels, width=req.geometry.width, height=req.geometry.height,
            seed=req.seed, timings={"encode_s": t1 - t0, "denoise_s": t["reference_s"] + t["denoise_s"],
                                    "decode_s": t["decode_s"], "total_s": t3 - t0},
        )
