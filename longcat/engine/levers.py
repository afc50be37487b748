"""Speed and memory levers for the edit engine: one config (:class:`SpeedConfig`), applied to loaded Components.

Every lever is an existing library feature, wired so it composes with our engine, and is measured on/off by
``bench/gpu_edit.py`` (see ``bench/README.md``):

speed
  ``cfg_batch``          CFG as one batch-2 transformer forward instead of two (read by ``EditEngine``/``DenoiseLoop``).
  ``attention_backend``  diffusers' attention dispatcher (``diffusers.models.attention_dispatch``), e.g.
                         ``_native_cudnn`` (torch SDPA forced to cuDNN), ``_native_flash``, ``flash`` (flash-attn),
                         ``_flash_3``. ``"auto"`` probes :data:`CUDA_ATTENTION_PREFERENCE` and keeps the first that runs.
  ``compile``            regional ``torch.compile`` of the repeated blocks (``ModelMixin.compile_repeated_blocks``).
  ``fuse_qkv``           one q|k|v (and one added q|k|v) matmul per attention (``fuse_qkv_projections``).
  ``quantization="fp8-dynamic"``  torchao fp8 matmuls (dynamic per-row activation scales) in the blocks' linears.
memory (the quickstart's OOM advice; lower resolution/steps are request fields, capped by ``Limits``)
  ``quantization="int8-quanto" | "fp8-torchao"``  weight-only quantization of the transformer (and text encoder).
  ``group_offload``      transformer weights stream from pinned CPU memory block by block (diffusers group
                         offloading, on a side CUDA stream); the text encoder is model-offloaded (below).
  ``model_cpu_offload``  whole components live in pinned CPU memory, and only the one running is on the GPU
                         (text encoder while encoding, transformer while denoising; the 84 M VAE stays).
  ``vae_tiling``         tiled VAE encode/decode (``AutoencoderKL.enable_tiling``), tile side ``vae_tile_size``.

Where a lever cannot apply, :func:`apply_speed_config` raises :class:`LeverUnavailable` naming it (never a silent
no-op): fp8 without a CUDA GPU of compute capability 8.9+, fused QKV with LoRA adapters (PEFT wraps ``to_q``/
``to_k``/``to_v``, which the fused ``to_qkv`` bypasses: an adapter would be silently ignored, so later adapter loads
are refused too), compile together with offloading or LoRA adapters, offloading a quantized model, or an
attention backend whose kernels are missing or must be downloaded at run time.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from longcat.errors import InvalidArgument

log = logging.getLogger(__name__)

QUANTIZATIONS = (None, "int8-quanto", "fp8-torchao", "fp8-dynamic")
# Tried in order by ``attention_backend="auto"`` on CUDA: torch SDPA forced to cuDNN (fastest on Hopper in our
# reading of torch's release notes; measured by the bench), else torch's own choice.
CUDA_ATTENTION_PREFERENCE = ("_native_cudnn", "native")
# Backends that fetch kernels from the Hub at run time: never on a serving machine.
_HUB_BACKEND_SUFFIX = "_hub"


class LeverUnavailable(InvalidArgument):
    """A speed/memory lever that cannot apply on this device or with this model state."""

    def __init__(self, message: str, lever: str):
        super().__init__(message, f"speed.{lever}")
        self.lever = lever


@dataclass(frozen=True)
class SpeedConfig:
    """Which levers to pull. The defaults are all off except ``cfg_batch``; see :meth:`for_device`."""

    cfg_batch: bool = True
    attention_backend: str | None = None     # None = library default (torch SDPA picks); "auto" = probe; or a name
    compile: bool = False
    compile_mode: str | None = None          # torch.compile mode, e.g. "max-autotune-no-cudagraphs"
    fuse_qkv: bool = False
    quantization: str | None = None          # see QUANTIZATIONS
    quantize_text_encoder: bool = False      # also quantize Qwen2.5-VL (weight-only kinds only)
    vae_tiling: bool = False
    vae_tile_size: int | None = None         # pixels; None = the VAE's own (its config.sample_size)
    group_offload: bool = False
    offload_blocks_per_group: int = 1
    model_cpu_offload: bool = False

    @classmethod
    def for_device(cls, device: str | torch.device, adapters: bool = False) -> "SpeedConfig":
        """Sane defaults. CPU: only batch-2 CFG. CUDA: batch-2 CFG, the fastest attention backend that runs and,
        when no LoRA adapters will be served (``adapters=False``), regional compile and fused QKV. Quantization,
        offloading and tiling change numerics or trade speed for memory: opt-in only.

        Batch-2 CFG on CPU is what the bench measured faster here (tiny dims, 1024², CFG 4.5, 3 steps, fastest of
        3 interleaved runs: 1.86 s/step batch-2 vs 2.52 s/step as two batch-1 forwards; ``bench/README.md``).
        Per-request step caches are not levers of this config: see :mod:`longcat.engine.caching`."""
        device = torch.device(device)
        if device.type != "cuda":
            return cls(cfg_batch=True)
        return cls(cfg_batch=True, attention_backend="auto", compile=not adapters, fuse_qkv=not adapters)

    def replace(self, **changes: Any) -> "SpeedConfig":
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """A short name of the levers that are on, e.g. ``cfg_batch+compile+fuse_qkv``."""
        parts = []
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in ("compile_mode", "vae_tile_size", "offload_blocks_per_group") or v in (None, False):
                continue
            parts.append(f.name if v is True else f"{f.name}={v}")
        return "+".join(parts) or "none"

    def validate(self, device: torch.device) -> None:
        if self.quantization not in QUANTIZATIONS:
            raise LeverUnavailable(f"unknown quantization {self.quantization!r}; use one of {QUANTIZATIONS[1:]}",
                                   "quantization")
        if self.group_offload and self.model_cpu_offload:
            raise LeverUnavailable("pick one of group_offload and model_cpu_offload", "group_offload")
        offload = self.group_offload or self.model_cpu_offload
        if offload and self.compile:
            raise LeverUnavailable("compile with offloading is not supported here (offload hooks move weights "
                                   "inside the compiled regions); use one or the other", "compile")
        if offload and self.fuse_qkv:
            raise LeverUnavailable("fused QKV with offloading would move the fused and the unfused weights; "
                                   "offloading is a memory mode, leave fuse_qkv off there", "fuse_qkv")
        if offload and self.quantization:
            raise LeverUnavailable("offloading a quantized model is not supported (quantized tensors do not "
                                   "move like plain weights); quantization alone already saves the memory",
                                   "quantization")
        if self.quantize_text_encoder and self.quantization not in ("int8-quanto", "fp8-torchao"):
            raise LeverUnavailable("quantize_text_encoder needs a weight-only quantization "
                                   "(int8-quanto or fp8-torchao)", "quantize_text_encoder")
        if self.offload_blocks_per_group < 1:
            raise LeverUnavailable("must be at least 1", "offload_blocks_per_group")
        if self.quantization in ("fp8-torchao", "fp8-dynamic"):
            _require_fp8(device, "quantization")


@dataclass
class AppliedSpeedConfig:
    """What :func:`apply_speed_config` did: the levers applied (with the resolved values) and how to undo them."""

    config: SpeedConfig
    applied: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    irreversible: list[str] = field(default_factory=list)
    _undo: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def undo(self) -> None:
        """Revert every reversible lever (newest first). Quantization cannot be undone: reload the weights."""
        while self._undo:
            self._undo.pop()()
        if self.irreversible:
            raise LeverUnavailable(f"{', '.join(self.irreversible)} cannot be undone in place; reload the model",
                                   self.irreversible[0])


def execution_device(module: torch.nn.Module) -> torch.device:
    """Where ``module`` computes, also while its weights are offloaded to the CPU (the loop creates its latents
    and position ids there)."""
    dev = getattr(module, "_longcat_execution_device", None)
    if dev is not None:
        return dev
    if hasattr(module, "device"):  # diffusers' ModelMixin and transformers report the group-offload onload device
        return torch.device(module.device)
    return next(module.parameters()).device


def apply_speed_config(components, config: SpeedConfig) -> AppliedSpeedConfig:
    """Apply ``config`` to loaded :class:`~longcat.models.loading.Components` (in place).

    ``cfg_batch`` is the engine's: build it with ``EditEngine(components, cfg_batch=config.cfg_batch)``.
    Returns what was applied; ``.undo()`` reverts all but quantization.
    """
    device = torch.device(components.device)
    config.validate(device)
    out = AppliedSpeedConfig(config)
    out.applied["cfg_batch"] = config.cfg_batch
    transformer, vae, text_encoder = components.transformer, components.vae, components.text_encoder
    try:
        if config.attention_backend is not None:
            _need(transformer, "attention_backend")
            _apply_attention_backend(transformer, config.attention_backend, device, out)
        if config.fuse_qkv:  # before quantization: it concatenates plain weights
            _need(transformer, "fuse_qkv")
            _apply_fuse_qkv(transformer, out)
        if config.quantization:
            _apply_quantization(components, config, out)
        if config.compile:
            _need(transformer, "compile")
            _apply_compile(transformer, config, out)
        if config.vae_tiling:
            _need(vae, "vae_tiling")
            _apply_vae_tiling(vae, config.vae_tile_size, out)
        if config.group_offload:
            _need(transformer, "group_offload")
            _apply_group_offload(transformer, text_encoder, device, config.offload_blocks_per_group, out)
        if config.model_cpu_offload:
            big = [m for m in (text_encoder, transformer) if m is not None]
            if len(big) < 2:
                raise LeverUnavailable("model_cpu_offload swaps the text encoder and the transformer; with only one "
                                       "of them loaded here it saves nothing (use group_offload for the transformer)",
                                       "model_cpu_offload")
            _apply_model_offload(big, device, out)
    except Exception:
        # Leave the components as they were (all but an already-applied quantization).
        while out._undo:
            try:
                out._undo.pop()()
            except Exception:  # pragma: no cover - best effort
                log.exception("undoing a lever failed")
        raise
    log.info("speed config applied", extra={"event": "speed_config", "levers": config.describe(),
                                            "applied": {k: str(v) for k, v in out.applied.items()}})
    return out


# --- helpers ---------------------------------------------------------------------------------------------------

def _need(module, lever: str) -> None:
    if module is None:
        raise LeverUnavailable("the component it applies to is not loaded here", lever)


def _require_fp8(device: torch.device, lever: str) -> None:
    if device.type != "cuda":
        raise LeverUnavailable("fp8 needs a CUDA GPU with compute capability 8.9+ (H100, L40S, ...); "
                               "on CPU use int8-quanto", lever)
    if torch.cuda.get_device_capability(device) < (8, 9):
        raise LeverUnavailable("fp8 needs compute capability 8.9+, this GPU has "
                               f"{'.'.join(map(str, torch.cuda.get_device_capability(device)))}", lever)


def has_lora(module: torch.nn.Module) -> bool:
    """Whether PEFT LoRA layers are injected (checked by shape, without importing peft)."""
    return any(hasattr(m, "lora_A") and hasattr(m, "base_layer") for m in module.modules())


def _probe_attention(backend: str, device: torch.device, dtype: torch.dtype) -> None:
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    q = torch.randn(1, 64, 2, 64, device=device, dtype=dtype)
    out = dispatch_attention_fn(q, q, q, backend=backend)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if not torch.isfinite(out).all():
        raise RuntimeError("non-finite output")


def _apply_attention_backend(transformer, name: str, device: torch.device, out: AppliedSpeedConfig) -> None:
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    known = {b.value for b in AttentionBackendName}
    if name == "auto":
        candidates = CUDA_ATTENTION_PREFERENCE if device.type == "cuda" else ("native",)
    elif name not in known:
        raise LeverUnavailable(f"unknown backend {name!r}; known: {', '.join(sorted(known))}", "attention_backend")
    elif name.endswith(_HUB_BACKEND_SUFFIX):
        raise LeverUnavailable(f"{name!r} downloads its kernels from the Hub at run time; install the kernel "
                               "package and use its local backend instead", "attention_backend")
    else:
        candidates = (name,)
    errors = []
    for cand in candidates:
        try:
            from diffusers.models.attention_dispatch import _check_attention_backend_requirements

            _check_attention_backend_requirements(AttentionBackendName(cand))
            _probe_attention(cand, device, transformer.dtype)
        except Exception as exc:  # noqa: BLE001 - any failure means "not usable here"
            errors.append(f"{cand}: {exc}")
            continue
        previous = _AttentionBackendRegistry._active_backend
        transformer.set_attention_backend(cand)  # also sets diffusers' process-wide active backend

        def undo(previous=previous):
            transformer.reset_attention_backend()
            _AttentionBackendRegistry.set_active_backend(previous)

        out._undo.append(undo)
        out.applied["attention_backend"] = cand
        if errors:
            out.notes.append("attention backends skipped: " + "; ".join(errors))
        return
    raise LeverUnavailable("no usable attention backend: " + "; ".join(errors), "attention_backend")


_FUSED_GUARDED = ("load_lora_adapter", "add_adapter")


def _apply_fuse_qkv(transformer, out: AppliedSpeedConfig) -> None:
    if has_lora(transformer):
        raise LeverUnavailable("LoRA adapters are loaded: PEFT wraps to_q/to_k/to_v, which the fused to_qkv "
                               "bypasses (adapters would be silently ignored); serve adapters unfused",
                               "fuse_qkv")
    from diffusers.models.attention import AttentionModuleMixin

    with torch.no_grad():
        transformer.fuse_qkv_projections()
        # diffusers keeps the unfused to_q/to_k/to_v alongside: make them views into the fused weights, so fusing
        # costs no memory (about 2.3 GB in bf16 for the real model otherwise).
        for m in transformer.modules():
            if not (isinstance(m, AttentionModuleMixin) and getattr(m, "fused_projections", False)):
                continue
            for fused, parts in (("to_qkv", ("to_q", "to_k", "to_v")),
                                 ("to_added_qkv", ("add_q_proj", "add_k_proj", "add_v_proj"))):
                f = getattr(m, fused, None)
                if f is None:
                    continue
                for attr in ("weight", "bias"):
                    full = getattr(f, attr)
                    if full is None:
                        continue
                    for part, view in zip(parts, full.data.chunk(3, dim=0)):
                        getattr(getattr(m, part), attr).data = view
    transformer._longcat_fused_qkv = True

    # An adapter loaded later would target the unfused layers the fused path no longer reads: refuse it.
    def refuse(*_a, **_k):
        raise LeverUnavailable("fused QKV projections are on: LoRA adapters would be silently ignored; "
                               "turn fuse_qkv off to serve adapters", "fuse_qkv")

    for name in _FUSED_GUARDED:
        setattr(transformer, name, refuse)

    def undo():
        for name in _FUSED_GUARDED:
            transformer.__dict__.pop(name, None)
        transformer.unfuse_qkv_projections()
        transformer._longcat_fused_qkv = False

    out._undo.append(undo)
    out.applied["fuse_qkv"] = True


def _blocks(transformer) -> list[torch.nn.Module]:
    names = set(getattr(transformer, "_repeated_blocks", ()) or ())
    return [m for m in transformer.modules() if type(m).__name__ in names]


def _apply_compile(transformer, config: SpeedConfig, out: AppliedSpeedConfig) -> None:
    if has_lora(transformer):
        raise LeverUnavailable("LoRA adapters are loaded: every adapter load/switch would recompile the blocks; "
                               "compile a base model that serves no adapters", "compile")
    # fullgraph=False: a graph break (a new diffusers/torch/quantization combination) costs a little speed
    # instead of failing the edit; LongCat's blocks compile with none today (checked on CPU).
    kwargs: dict[str, Any] = {"fullgraph": False}
    if config.compile_mode:
        kwargs["mode"] = config.compile_mode
    transformer.compile_repeated_blocks(**kwargs)

    def undo():
        for block in _blocks(transformer):
            block._compiled_call_impl = None

    out._undo.append(undo)
    out.applied["compile"] = f"repeated blocks x{len(_blocks(transformer))} {kwargs}"
    out.notes.append("compile: the first edit at each new shape (size, CFG on/off) compiles; warm up first")


def _fp8_filter(module: torch.nn.Module, fqn: str) -> bool:
    """The blocks' big matmuls; not the AdaLN modulation (batch-sized inputs) nor the 64-channel in/out layers."""
    return (isinstance(module, torch.nn.Linear) and fqn.startswith(("transformer_blocks.", "single_transformer_blocks."))
            and ".norm" not in fqn and module.in_features % 16 == 0 and module.out_features % 16 == 0)


def _apply_quantization(components, config: SpeedConfig, out: AppliedSpeedConfig) -> None:
    from longcat.models.precision import is_quantized, quantize_module, resolve_precision

    kind = config.quantization
    targets = [("transformer", components.transformer)]
    if config.quantize_text_encoder:
        targets.append(("text_encoder", components.text_encoder))
    for name, module in targets:
        _need(module, "quantization")
        if is_quantized(module):
            raise LeverUnavailable(f"the {name} is already quantized "
                                   f"({getattr(module, '_longcat_quantization')}); load it unquantized", "quantization")
    if kind == "fp8-dynamic":
        try:
            from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_
        except ImportError as exc:
            raise LeverUnavailable("fp8-dynamic needs the torchao package", "quantization") from exc
        transformer = components.transformer
        # set_inductor_config=False: torchao would otherwise retune torch.compile process-wide (slower compiles).
        quantize_(transformer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False),
                  filter_fn=_fp8_filter)
        transformer._longcat_quantization = kind  # adapters never fuse onto it
        out.applied["quantization"] = "fp8-dynamic (transformer blocks' linears)"
    else:
        precision = resolve_precision(kind, components.device, field="speed.quantization")
        for name, module in targets:
            quantize_module(module, precision)
        out.applied["quantization"] = f"{kind} ({', '.join(n for n, _ in targets)})"
    out.irreversible.append("quantization")


def _apply_vae_tiling(vae, tile: int | None, out: AppliedSpeedConfig) -> None:
    before = (vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size)
    if tile is not None:
        if tile % 64 or tile < 64:
            raise LeverUnavailable(f"vae_tile_size must be a multiple of 64 (>= 64), got {tile}", "vae_tiling")
        down = 2 ** (len(vae.config.block_out_channels) - 1)
        vae.tile_sample_min_size, vae.tile_latent_min_size = tile, tile // down
    vae.enable_tiling()

    def undo():
        vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size = before

    out._undo.append(undo)
    out.applied["vae_tiling"] = f"tiles of {vae.tile_sample_min_size} px"


# --- offloading ----------------------------------------------------------------------------------------------

class _Resident:
    """One module's weights kept in (pinned) CPU memory; ``onload`` copies them to the device, ``offload`` drops
    the device copies (free: the weights never change while served)."""

    def __init__(self, module: torch.nn.Module, device: torch.device):
        self.module, self.device = module, device
        self.pin = device.type == "cuda"
        self.cpu: dict[str, torch.Tensor] = {}
        self.on_device = True
        self.offload()

    def _tensors(self):
        yield from self.module.named_parameters()
        yield from self.module.named_buffers()

    def offload(self) -> None:
        if not self.on_device:
            return
        for name, t in self._tensors():
            if name not in self.cpu:  # first time (or a tensor added since, e.g. a LoRA adapter)
                c = t.data.to("cpu", copy=True)
                self.cpu[name] = c.pin_memory() if self.pin else c
            t.data = self.cpu[name]
        self.on_device = False
        if self.pin:
            torch.cuda.empty_cache()

    def onload(self) -> None:
        if self.on_device:
            return
        for name, t in self._tensors():
            c = self.cpu.get(name)
            if c is None:  # added while offloaded: it lives on the CPU already
                c = self.cpu[name] = t.data.pin_memory() if self.pin and not t.data.is_pinned() else t.data
            t.data = c if self.device.type == "cpu" else c.to(self.device, non_blocking=self.pin)
        self.on_device = True


class _OneAtATime:
    """Model CPU offload for separately called components: running one evicts the others first."""

    def __init__(self, modules: list[torch.nn.Module], device: torch.device, evictors: tuple = ()):
        from accelerate.utils import send_to_device

        self.device = device
        self.members = [_Resident(m, device) for m in modules]
        self.handles = []
        for r in self.members:
            def pre(module, args, kwargs, r=r):
                for other in self.members:
                    if other is not r:
                        other.offload()
                r.onload()
                return send_to_device(args, self.device), send_to_device(kwargs, self.device)

            self.handles.append(r.module.register_forward_pre_hook(pre, with_kwargs=True))
            r.module._longcat_execution_device = device
        for m in evictors:  # modules that run with their own offloading (group offload): evict everyone first
            self.handles.append(m.register_forward_pre_hook(lambda *_: self.evict_all()))

    def evict_all(self) -> None:
        for r in self.members:
            r.offload()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        for r in self.members:
            r.onload()
            r.module.__dict__.pop("_longcat_execution_device", None)


def _apply_model_offload(modules, device: torch.device, out: AppliedSpeedConfig, evictors: tuple = ()) -> None:
    if device.type != "cuda":
        out.notes.append("model_cpu_offload on a CPU device moves nothing (weights are already in CPU memory)")
    manager = _OneAtATime(modules, device, evictors)
    out._undo.append(manager.remove)
    out.applied["model_cpu_offload"] = [type(m).__name__ for m in modules]


def _apply_group_offload(transformer, text_encoder, device: torch.device, per_group: int,
                         out: AppliedSpeedConfig) -> None:
    from diffusers.hooks.group_offloading import (
        _GROUP_OFFLOADING,
        _LAYER_EXECUTION_TRACKER,
        _LAZY_PREFETCH_GROUP_OFFLOADING,
    )
    from diffusers.hooks.hooks import HookRegistry

    cuda = device.type == "cuda"
    transformer.enable_group_offload(onload_device=device, offload_device=torch.device("cpu"),
                                     offload_type="block_level", num_blocks_per_group=per_group,
                                     use_stream=cuda, non_blocking=cuda)

    def undo():
        registry = HookRegistry.check_if_exists_or_initialize(transformer)
        for name in (_GROUP_OFFLOADING, _LAYER_EXECUTION_TRACKER, _LAZY_PREFETCH_GROUP_OFFLOADING):
            registry.remove_hook(name, recurse=True)
        transformer.to(device)

    out._undo.append(undo)
    out.applied["group_offload"] = f"transformer block_level x{per_group}, stream={cuda}"
    if not cuda:
        out.notes.append("group_offload on a CPU device moves nothing (onload and offload device are both the CPU)")
    if text_encoder is not None:
        # Qwen2.5-VL is no diffusers model: it is offloaded whole, and evicted when the transformer runs.
        _apply_model_offload([text_encoder], device, out, evictors=(transformer,))
