"""``longcat.v1.Denoiser``: reference latents, the denoise loop as a progress stream, decoding, adapters."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from longcat.adapters import AdapterManager
from longcat.api.edit import (
    AdapterRef,
    Limits,
    check_adapters,
    check_guidance,
    check_steps,
    resolve_geometry,
    resolve_image,
    resolve_seed,
)
from longcat.api.model_defaults import STANDARD, ModelDefaults
from longcat.conditioning import Geometry, reference_pixels, to_pil
from longcat.conditioning.geometry import check_size
from longcat.engine.denoise import DenoiseLoop, StepEvent
from longcat.engine.quality_gate import PresetGate
from longcat.engine.stage import StageRequest, run_denoise_stage
from longcat.errors import InvalidArgument, Unavailable
from longcat.images import encode_png
from longcat.rpc import metrics
from longcat.rpc.codec import from_proto, to_proto
from longcat.rpc.handler import rpc_method
from longcat.v1 import common_pb2, denoiser_pb2, denoiser_pb2_grpc

SERVICE = "longcat.v1.Denoiser"
MAX_TEXT_TOKENS = 16384


@dataclass
class DenoiserBackend:
    loop: DenoiseLoop
    adapters: AdapterManager
    limits: Limits
    adapter_root: Path | None = None
    gate: PresetGate | None = None  # which speed presets may serve (longcat.engine.quality_gate)
    defaults: ModelDefaults = STANDARD  # unset steps/guidance of queued edits (Edit-Turbo: 8, no CFG)

    def __post_init__(self):
        if self.gate is None:  # no quality record: only 'exact' serves
            self.gate = PresetGate(None, "")

    @property
    def embed_dim(self) -> int:
        return self.loop.transformer.config.joint_attention_dim

    def free_memory(self) -> None:
        if self.loop.device.type == "cuda":
            torch.cuda.empty_cache()


def png_of(pixels: torch.Tensor) -> bytes:
    return encode_png(to_pil(pixels)[0])


class DenoiserServicer(denoiser_pb2_grpc.DenoiserServicer):
    def __init__(self):
        self.backend: DenoiserBackend | None = None

    def _ready(self, context) -> DenoiserBackend:
        if self.backend is None:
            raise Unavailable("the denoiser is still loading its model")
        return self.backend

    # --- parsing -----------------------------------------------------------------------------------------

    def _geometry(self, width: int, height: int, backend: DenoiserBackend, image=None) -> Geometry:
        if image is not None:
            return resolve_geometry(width, height, image.size, backend.limits)
        if width <= 0 or height <= 0:
            raise InvalidArgument("is required with latents (use the size EncodePrompt returned)",
                                  "width" if width <= 0 else "height")
        check_size(width, height, backend.limits.max_pixels, backend.limits.min_side)
        return Geometry(width=width, height=height)

    def _embeds(self, msg, field: str, backend: DenoiserBackend, required: bool):
        t = from_proto(msg, field, required=required)
        if t is None:
            return None
        if t.dim() != 3 or t.shape[0] != 1 or t.shape[2] != backend.embed_dim or not 0 < t.shape[1] <= MAX_TEXT_TOKENS:
            raise InvalidArgument(f"must have shape (1, tokens, {backend.embed_dim}), got {list(t.shape)}", field)
        if not t.is_floating_point() or not torch.isfinite(t).all():
            raise InvalidArgument("must be finite floating-point values", field)
        return t.to(backend.loop.dtype)

    def _latents(self, msg, field: str, geometry: Geometry, backend: DenoiserBackend) -> torch.Tensor:
        t = from_proto(msg, field)
        want = [1, geometry.image_seq_len, 64]
        if list(t.shape) != want or not t.is_floating_point():
            raise InvalidArgument(f"must be floating point with shape {want} for {geometry.width}x"
                                  f"{geometry.height}, got {t.dtype} {list(t.shape)}", field)
        return t

    # --- RPCs --------------------------------------------------------------------------------------------

    @rpc_method(SERVICE)
    def EncodeImage(self, request, context):
        backend = self._ready(context)
        image = resolve_image(request.image, backend.limits)
        geometry = self._geometry(request.width, request.height, backend, image)
        latents = backend.loop.encode_reference(reference_pixels(image, geometry))
        return denoiser_pb2.EncodeImageResponse(latents=to_proto(latents), width=geometry.width,
                                                height=geometry.height)

    @rpc_method(SERVICE)
    def Denoise(self, request: denoiser_pb2.DenoiseRequest, context):
        backend = self._ready(context)
        limits = backend.limits
        steps = check_steps(request.num_inference_steps, limits)
        guidance = check_guidance(request.guidance_scale, limits)
        seed = resolve_seed(request.seed)
        refs = check_adapters([AdapterRef(a.name, a.scale) for a in request.adapters], limits)
        preset = backend.gate.check(request.speed_preset, [r.name for r in refs])
        prompt = self._embeds(request.prompt_embeds, "prompt_embeds", backend, required=True)
        negative = self._embeds(request.negative_embeds, "negative_embeds", backend, required=guidance > 1.0)
        if guidance <= 1.0:
            negative = None
        elif negative.shape != prompt.shape:
            raise InvalidArgument(f"must have the prompt_embeds' shape {list(prompt.shape)}, got "
                                  f"{list(negative.shape)}", "negative_embeds")
        which = request.WhichOneof("reference")
        if which is None:
            raise InvalidArgument("give the reference image or its latents", "image")
        image = resolve_image(request.image, limits) if which == "image" else None
        geometry = self._geometry(request.width, request.height, backend, image)
        latents_in = self._latents(request.reference_latents, "reference_latents", geometry, backend) \
            if which == "reference_latents" else None

        cancel = threading.Event()
        context.add_callback(cancel.set)  # client cancel, deadline or disconnect stop the loop between steps
        events: queue.Queue = queue.Queue()

        def work():
            try:
                t0 = time.perf_counter()
                stage = run_denoise_stage(backend.loop, backend.adapters, StageRequest(
                    prompt, negative, geometry, steps, guidance, seed, image=image, reference_latents=latents_in,
                    adapters=[(r.name, r.scale) for r in refs], speed_preset=preset),
                    on_step=lambda ev: events.put(("progress", ev)), cancel=cancel,
                    preview_every=max(0, request.preview_every), decode=not request.return_latents)
                latents, t = stage.latents, stage.timings
                t1 = t0 + t["reference_s"]
                t2 = t1 + t["denoise_s"]
                metrics.STEPS.inc(steps)
                metrics.STEPS_PER_SECOND.set(steps / max(t2 - t1, 1e-9))
                result = denoiser_pb2.DenoiseResult(width=geometry.width, height=geometry.height, seed=seed)
                if request.return_latents:
                    result.latents.CopyFrom(to_proto(latents))
                else:
                    result.image = png_of(stage.pixels)
                t3 = t2 + t["decode_s"]
                result.timings.CopyFrom(common_pb2.Timings(encode_s=t1 - t0, denoise_s=t2 - t1, decode_s=t3 - t2,
                                                           total_s=t3 - t0))
                events.put(("result", result))
            except BaseException as exc:  # noqa: BLE001 - handed to the RPC thread
                events.put(("error", exc))
            finally:
                backend.free_memory()

        threading.Thread(target=work, name=f"denoise-{seed}", daemon=True).start()
        try:
            while True:
                kind, payload = events.get()
                if kind == "progress":
                    yield denoiser_pb2.DenoiseEvent(progress=_progress(payload))
                elif kind == "result":
                    yield denoiser_pb2.DenoiseEvent(result=payload)
                    return
                else:
                    raise payload
        finally:
            cancel.set()  # the generator closed early (client went away): stop the loop too

    @rpc_method(SERVICE)
    def Decode(self, request, context):
        backend = self._ready(context)
        geometry = self._geometry(request.width, request.height, backend)
        latents = self._latents(request.latents, "latents", geometry, backend)
        return denoiser_pb2.DecodeResponse(image=png_of(backend.loop.decode(latents.to(backend.loop.dtype),
                                                                            geometry)))

    @rpc_method(SERVICE)
    def LoadAdapter(self, request, context):
        backend = self._ready(context)
        path = None
        if request.path:
            path = Path(request.path).resolve()
            root = backend.adapter_root.resolve() if backend.adapter_root else None
            if root is None or not path.is_relative_to(root):
                raise InvalidArgument("must be inside the denoiser's adapter folder", "path")
        backend.adapters.load(request.name, path)
        return self._loaded(backend)

    @rpc_method(SERVICE)
    def UnloadAdapter(self, request, context):
        backend = self._ready(context)
        from longcat.api.names import validate_adapter_ref
        from longcat.errors import AdapterNotFound

        validate_adapter_ref(request.name, field="name")
        if not backend.adapters.unload(request.name):
            raise AdapterNotFound(f"adapter {request.name!r} is not loaded", "name")
        return self._loaded(backend)

    @rpc_method(SERVICE)
    def ListLoadedAdapters(self, request, context):
        return self._loaded(self._ready(context))

    @staticmethod
    def _loaded(backend: DenoiserBackend) -> denoiser_pb2.LoadedAdapters:
        return denoiser_pb2.LoadedAdapters(names=backend.adapters.loaded(), capacity=backend.adapters.capacity)


def _progress(ev: StepEvent) -> common_pb2.StepProgress:
    msg = common_pb2.StepProgress(step=ev.step, total=ev.total, elapsed_s=ev.elapsed_s, eta_s=ev.eta_s)
    if ev.preview is not None:
        msg.preview_png = png_of(ev.preview)
    return msg
