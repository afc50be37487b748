"""Step caching as per-request speed presets, built on ``diffusers.hooks`` (diffusers 0.42).

A preset names a step cache applied to the transformer for one denoise run and removed after it (nothing
survives into the next request: the hooks, their state and the ``_cache_config`` are all gone, which
``assert_no_cache`` checks). ``exact`` (the default) applies nothing.

Which diffusers caches work with ``LongCatImageTransformer2DModel`` (evaluated by ``longcat quality`` and
``tests/test_caching.py`` on the tiny model; the figures are in ``bench/README.md``):

* ``FirstBlockCache`` (ParaAttention's dynamic cache): needs the block classes in diffusers'
  ``TransformerBlockRegistry``; LongCat's are not registered in 0.42, but their blocks return
  ``(encoder_hidden_states, hidden_states)`` exactly like Flux's, so :func:`register_longcat_blocks` registers
  them with Flux's metadata. Then it works: it skips the remaining blocks when the first block's residual
  barely changed, so its saving adapts to the content (threshold-driven, no calibration).
* ``TaylorSeer``: hooks attention modules by name, no registry needed; works out of the box. It forecasts
  each attention output with a Taylor series for ``cache_interval - 1`` of every ``cache_interval`` steps: a
  fixed, predictable saving (the attention share of the step).
* ``MagCache``: same registry as FirstBlockCache; needs per-model calibrated ``mag_ratios`` (a calibration
  run per model and step count). Usable after calibration; not a preset until we ship ratios for LongCat.
* ``FasterCache``: assumes a batched CFG input (it splits the batch into cond/uncond and tensor_format
  ``BCFHW``, video-oriented); it does not fit our per-branch forwards. Not offered.

Presets: ``fast`` = FirstBlockCache (threshold 0.08; adapts, and never caches the first step); ``taylor`` =
TaylorSeer (interval 3 after 4 warm-up steps). Both are refused by the denoiser when their recorded drift
exceeds the configured bound (:mod:`longcat.engine.quality_gate`).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import torch

from longcat.api.presets import EXACT, PRESET_NAMES, PRESETS, check_preset  # noqa: F401 - re-exported
from longcat.errors import InvalidArgument

log = logging.getLogger(__name__)

_registered = False


def register_longcat_blocks() -> None:
    """Tell diffusers' block registry how LongCat's blocks return their states (as Flux's do)."""
    global _registered
    if _registered:
        return
    from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry
    from diffusers.models.transformers.transformer_longcat_image import (
        LongCatImageSingleTransformerBlock,
        LongCatImageTransformerBlock,
    )

    for cls in (LongCatImageTransformerBlock, LongCatImageSingleTransformerBlock):
        TransformerBlockRegistry.register(model_class=cls, metadata=TransformerBlockMetadata(
            return_hidden_states_index=1, return_encoder_hidden_states_index=0))
    _registered = True


def cache_config(preset: str, steps: int):
    """The diffusers cache config for ``preset`` (None for ``exact``)."""
    from diffusers.hooks import FirstBlockCacheConfig, TaylorSeerCacheConfig

    if preset == EXACT:
        return None
    if preset == "fast":
        register_longcat_blocks()
        return FirstBlockCacheConfig(threshold=0.08)
    if preset == "taylor":
        # Full compute for the first steps (the image forms there), then every 3rd step; fp32 factors.
        return TaylorSeerCacheConfig(cache_interval=3, disable_cache_before_step=min(4, max(1, steps // 5)),
                                     max_order=1, taylor_factors_dtype=torch.float32)
    raise InvalidArgument(f"unknown speed preset {preset!r}", "speed_preset")


def assert_no_cache(transformer) -> None:
    """Raise if any cache hook or config is left on ``transformer`` (the per-request leak check)."""
    if getattr(transformer, "_cache_config", None) is not None:
        raise RuntimeError(f"a step cache is still enabled: {transformer._cache_config!r}")
    for name, module in transformer.named_modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None and any(_is_cache_hook(h) for h in registry.hooks):
            raise RuntimeError(f"a cache hook is still registered on {name or 'the transformer'}")


def _is_cache_hook(name: str) -> bool:
    return any(k in name for k in ("cache", "taylorseer", "fbc", "mag", "pyramid"))


@contextlib.contextmanager
def step_cache(transformer, preset: str, steps: int) -> Iterator[None]:
    """Apply ``preset``'s cache hooks to ``transformer`` for the duration of one denoise run, then remove them.

    The one engine-level switch: :class:`~longcat.engine.denoise.DenoiseLoop` calls it around every run, so
    the in-process engine and the denoiser worker apply presets identically."""
    config = cache_config(check_preset(preset), steps)
    if config is None:
        yield
        return
    if getattr(transformer, "_cache_config", None) is not None:
        raise RuntimeError("a step cache is already enabled on this transformer")  # a leak from an earlier run
    transformer.enable_cache(config)
    try:
        yield
    finally:
        transformer.disable_cache()
    assert_no_cache(transformer)


def branch_context(transformer, name: str):
    """diffusers' per-branch cache state (``cond`` / ``uncond`` / ``cfg`` for the batch-2 forward); a no-op
    when no cache is on, so the exact path is untouched."""
    if getattr(transformer, "_cache_config", None) is None:
        return contextlib.nullcontext()
    return transformer.cache_context(name)
