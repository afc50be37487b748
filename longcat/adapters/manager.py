"""Per-request LoRA adapters on one transformer: an LRU of loaded adapters plus a scoped ``activate``.

Adapters are injected unfused (PEFT ``lora.Linear`` wrappers) and switched with ``set_adapters`` /
``disable_lora``; nothing is ever fused, so a quantized base (optimum-quanto int8, where ``fuse_lora`` is a
silent no-op) stays exact and "no adapters" is bit-exact the base model.

PEFT keys its layers by adapter name, and a name with a ``.`` breaks it (and short names collide with its
substring matching), so each load gets an opaque PEFT name (``lc_000001``); user names map onto it.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import numbers
import os
import threading
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from longcat.adapters.formats import PREFIX, LoraFile, read_lora, resolve_lora_files
from longcat.adapters.store import AdapterStore
from longcat.api.names import validate_adapter_ref
from longcat.errors import AdapterMismatch, AdapterNotFound, InvalidArgument
from longcat.models.precision import is_quantized

log = logging.getLogger(__name__)

# Sub-module names PEFT adds inside a wrapped layer; an adapter must never target these.
_PEFT_PARTS = {"base_layer", "lora_A", "lora_B", "lora_dropout", "lora_magnitude_vector", "lora_embedding_A",
               "lora_embedding_B"}


@dataclass
class _Loaded:
    peft_name: str
    path: Path
    signature: tuple  # (file, mtime_ns, size) of the weights and config: a change means reload


class AdapterManager:
    """Loads named LoRA adapters into ``transformer`` (at most ``capacity`` at once, LRU-evicted) and
    applies a request's ``[(name, scale), ...]`` for the duration of ``with manager.activate(refs):``."""

    def __init__(self, transformer: torch.nn.Module, store: AdapterStore | None = None, capacity: int = 8):
        if not isinstance(capacity, int) or capacity < 1:
            raise InvalidArgument(f"capacity must be a positive integer, got {capacity!r}", "capacity")
        self.transformer = transformer
        self.store = store
        self.capacity = capacity
        # Re-entrant: ``activate`` holds it for the whole request and loads inside it.
        self._lock = threading.RLock()
        self._loaded: OrderedDict[str, _Loaded] = OrderedDict()  # least recently used first
        self._ids = itertools.count(1)
        self._in_use: dict[str, int] = {}  # name -> in-flight jobs holding it (never evicted while held)

    # -- public API --------------------------------------------------------------------------------------

    def load(self, name: str, path: str | os.PathLike | None = None, field: str = "adapters") -> str:
        """Load (or refresh, if its file changed) adapter ``name``; returns the PEFT adapter name used."""
        with self._lock:
            peft_name = self._ensure(name, path, field, pinned={name})
            self._disable()
            return peft_name

    def unload(self, name: str) -> bool:
        """Remove adapter ``name`` from the transformer; False if it was not loaded."""
        with self._lock:
            if name in self._in_use:
                raise InvalidArgument(f"adapter {name!r} is in use by {self._in_use[name]} running job(s)", "name")
            entry = self._loaded.pop(name, None)
            if entry is None:
                return False
            self._remove(entry.peft_name)
            self._log("adapter_unloaded", name, entry)
            return True

    def loaded(self) -> list[str]:
        """Loaded adapter names, least recently used first."""
        with self._lock:
            return list(self._loaded)

    def peft_name(self, name: str) -> str | None:
        """The adapter name inside the transformer's ``peft_config`` for ``name`` (None if not loaded)."""
        with self._lock:
            entry = self._loaded.get(name)
            return entry.peft_name if entry else None

    @contextmanager
    def activate(self, refs: Sequence[Any], field: str = "adapters") -> Iterator[list[tuple[str, float]]]:
        """Run the body with exactly ``refs`` (``(name, scale)`` pairs) applied; ``[]`` = the bare base model.

        Holds the lock for the whole body: one request at a time uses the transformer's adapter state.
        """
        parsed = parse_refs(refs, field)
        if len(parsed) > self.capacity:
            raise InvalidArgument(
                f"{len(parsed)} adapters requested, but at most {self.capacity} can be loaded at once", field)
        with self._lock:
            try:
                if parsed:
                    pinned = {name for name, _ in parsed}
                    names = [self._ensure(name, None, f"{field}[{i}]", pinned) for i, (name, _) in enumerate(parsed)]
                    # set_adapters does not undo disable_lora; enable first, then pick names and scales.
                    self.transformer.enable_lora()
                    self.transformer.set_adapters(names, [scale for _, scale in parsed])
                else:
                    self._disable()
                yield parsed
            finally:
                self._disable()

    # -- in-flight jobs of the step scheduler (mixed adapters in one forward) ------------------------------

    def can_hold(self, refs: Sequence[Any], field: str = "adapters") -> bool:
        """Whether ``refs`` can be held along with every adapter in-flight jobs hold (the LRU bound)."""
        names = {name for name, _ in parse_refs(refs, field)}
        with self._lock:
            return len(names | set(self._in_use)) <= self.capacity

    def hold(self, refs: Sequence[Any], field: str = "adapters") -> list[tuple[str, float]]:
        """Load ``refs`` and keep them loaded until :meth:`release`; returns ``[(peft name, scale)]``."""
        parsed = parse_refs(refs, field)
        with self._lock:
            names = {name for name, _ in parsed}
            if len(names | set(self._in_use)) > self.capacity:
                raise InvalidArgument(f"{len(names | set(self._in_use))} adapters would be in use, but at most "
                                      f"{self.capacity} can be loaded at once", field)
            pinned = names | set(self._in_use)
            out = [(self._ensure(name, None, f"{field}[{i}]", pinned), scale) for i, (name, scale) in enumerate(parsed)]
            for name in names:
                self._in_use[name] = self._in_use.get(name, 0) + 1
            self._disable()
            return out

    def release(self, refs: Sequence[Any]) -> None:
        with self._lock:
            for name, _ in parse_refs(refs):
                left = self._in_use.get(name, 0) - 1
                if left > 0:
                    self._in_use[name] = left
                else:
                    self._in_use.pop(name, None)

    @contextmanager
    def batch_lock(self) -> Iterator[None]:
        """Hold the adapter state for one batched forward, the layers' own LoRA off (rows add theirs)."""
        with self._lock:
            self._disable()
            yield

    # -- loading -----------------------------------------------------------------------------------------

    def _ensure(self, name: str, path: str | os.PathLike | None, field: str, pinned: set[str]) -> str:
        name_field = f"{field}.name"
        validate_adapter_ref(name, name_field)  # a canonical owner/name@vN, or a hand-placed folder's name
        entry = self._loaded.get(name)
        if path is None:
            if entry is not None and (self.store is None or not _is_under(entry.path, self.store.root)):
                path = entry.path  # loaded from an explicit path: keep following that path
            elif self.store is not None:
                path = self._store_path(name, name_field)
            else:
                raise AdapterNotFound(f"adapter {name!r} is not loaded and no adapter store is configured",
                                      name_field)
        path = Path(path)
        try:
            weights, config, _ = resolve_lora_files(path, name_field)
        except AdapterNotFound:
            if entry is not None:  # its files are gone: stop serving the stale copy
                self.unload(name)
            raise
        signature = _signature(weights, config)
        if entry is not None and entry.path == path and entry.signature == signature:
            self._loaded.move_to_end(name)
            return entry.peft_name

        lora = read_lora(path, field)
        peft_name = f"lc_{next(self._ids):06d}"
        self._inject(lora, peft_name, field)
        if entry is not None:  # a changed file: the new copy is in, drop the old one
            self._remove(entry.peft_name)
        self._loaded[name] = new = _Loaded(peft_name, path, signature)
        self._loaded.move_to_end(name)
        self._log("adapter_loaded", name, new, rank=lora.rank, alpha=lora.alpha, format=lora.format,
                  reloaded=entry is not None, quantized_base=is_quantized(self.transformer))
        self._evict(pinned | {name})
        return peft_name

    def _store_path(self, name: str, name_field: str) -> Path:
        try:
            return self.store.path_for(name, name_field)
        except AdapterNotFound:
            if name in self._loaded:  # deleted from the store: drop it too
                self.unload(name)
            raise

    def _evict(self, pinned: set[str]) -> None:
        pinned = pinned | set(self._in_use)  # an adapter an in-flight job uses is never evicted
        for victim in [n for n in self._loaded if n not in pinned]:
            if len(self._loaded) <= self.capacity:
                break
            entry = self._loaded.pop(victim)
            self._remove(entry.peft_name)
            self._log("adapter_evicted", victim, entry)

    def _inject(self, lora: LoraFile, peft_name: str, field: str) -> None:
        """Add ``lora`` as ``peft_name``; on any failure the transformer is left as it was."""
        self._check_fits(lora, field)
        # Our LoraConfig (rank/alpha from the file, exact module names), not diffusers' guess from shapes.
        metadata = {PREFIX + k: v for k, v in lora.lora_config_kwargs().items()}
        try:
            with _quiet_peft():
                self.transformer.load_lora_adapter(dict(lora.state_dict), prefix="transformer",
                                                   adapter_name=peft_name, metadata=metadata)
            missing = [m for m in lora.module_names() if peft_name not in _lora_keys(self._module(m))]
            if missing:
                raise AdapterMismatch(f"adapter {str(lora.source)!r} did not attach to {missing[:3]}", field)
        except Exception as exc:
            self._remove(peft_name)
            if isinstance(exc, AdapterMismatch):
                raise
            if isinstance(exc, (RuntimeError, ValueError, KeyError, TypeError)):
                raise AdapterMismatch(f"adapter {str(lora.source)!r} does not fit this transformer: {exc}",
                                      field) from exc
            raise

    def _check_fits(self, lora: LoraFile, field: str) -> None:
        """Refuse an adapter for another architecture before touching the transformer."""
        layers = _linear_layers(self.transformer)
        sd = lora.state_dict
        for m in lora.module_names():
            base = layers.get(m)
            if base is None:
                raise AdapterMismatch(
                    f"adapter {str(lora.source)!r} targets {m!r}, which is not a linear layer of this transformer "
                    "(an adapter for another model?)", field)
            a, b = sd[f"{PREFIX}{m}.lora_A.weight"], sd[f"{PREFIX}{m}.lora_B.weight"]
            bias = sd.get(f"{PREFIX}{m}.lora_B.bias")
            if a.shape[1] != base.in_features or b.shape[0] != base.out_features or (
                    bias is not None and tuple(bias.shape) != (base.out_features,)):
                raise AdapterMismatch(
                    f"adapter {str(lora.source)!r} has {m!r} as {a.shape[1]}->{b.shape[0]} features, this "
                    f"transformer has {base.in_features}->{base.out_features} (an adapter for another model?)",
                    field)

    # -- transformer state -------------------------------------------------------------------------------

    def _module(self, name: str) -> torch.nn.Module | None:
        try:
            return self.transformer.get_submodule(name)
        except AttributeError:
            return None

    def _remove(self, peft_name: str) -> None:
        """Delete one PEFT adapter wherever it got (even half-way); unwrap all LoRA layers when none is left."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        with _quiet_peft():
            for module in self.transformer.modules():
                if isinstance(module, BaseTunerLayer) and peft_name in _lora_keys(module):
                    module.delete_adapter(peft_name)
        config = getattr(self.transformer, "peft_config", None)
        if config is not None:
            config.pop(peft_name, None)
        if not getattr(self.transformer, "peft_config", None):
            # No adapter left: put the original layers back, so the model is structurally the base again.
            self.transformer.unload_lora()
        else:
            self._disable()

    def _disable(self) -> None:
        if getattr(self.transformer, "peft_config", None):
            self.transformer.disable_lora()

    def _log(self, event: str, name: str, entry: _Loaded, **extra: Any) -> None:
        log.info(json.dumps({"event": event, "adapter": name, "peft_name": entry.peft_name,
                             "path": str(entry.path), **extra}, default=str))


def parse_refs(refs: Sequence[Any] | None, field: str = "adapters") -> list[tuple[str, float]]:
    """``[(name, scale)]``, ``[{"name", "scale"}]`` or objects with ``.name``/``.scale`` -> validated pairs."""
    out: list[tuple[str, float]] = []
    seen: set[str] = set()
    for i, ref in enumerate(refs or ()):
        if isinstance(ref, dict):
            name, scale = ref.get("name"), ref.get("scale", 1.0)
        elif isinstance(ref, (tuple, list)) and len(ref) == 2:
            name, scale = ref
        elif hasattr(ref, "name") and hasattr(ref, "scale"):
            name, scale = ref.name, ref.scale
        else:
            raise InvalidArgument(f"expected (name, scale), got {ref!r}", f"{field}[{i}]")
        validate_adapter_ref(name, f"{field}[{i}].name")
        if name in seen:
            raise InvalidArgument(f"adapter {name!r} is listed twice", f"{field}[{i}].name")
        seen.add(name)
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale):
            raise InvalidArgument(f"scale must be a finite number, got {scale!r}", f"{field}[{i}].scale")
        out.append((name, float(scale)))
    return out


@contextmanager
def _quiet_peft() -> Iterator[None]:
    # Several adapters on one model and deleting the active one are what we mean to do; PEFT warns on both.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Already found a `peft_config` attribute", category=UserWarning)
        warnings.filterwarnings("ignore", message=r"Adapter lc_\d+ was active which is now deleted",
                                category=UserWarning)
        yield


def _linear_layers(model: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """Module name -> its (unwrapped) linear layer, as the adapter files name them."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    out = {}
    for name, module in model.named_modules():
        if _PEFT_PARTS.intersection(name.split(".")):
            continue
        base = module.get_base_layer() if isinstance(module, BaseTunerLayer) else module
        if isinstance(base, torch.nn.Linear):
            out[name] = base
    return out


def _lora_keys(module: torch.nn.Module | None) -> set[str]:
    keys: set[str] = set()
    for attr in ("lora_A", "lora_B"):
        keys.update(getattr(module, attr, None) or {})
    return keys


def _signature(weights: Path, config: Path | None) -> tuple:
    out = []
    for p in (weights, config):
        if p is not None:
            st = p.stat()
            out.append((str(p), st.st_mtime_ns, st.st_size))
    return tuple(out)


def _is_under(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(Path(root).resolve())
    except OSError:
        return False
