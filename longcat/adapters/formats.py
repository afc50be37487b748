"""LoRA files on disk: read the diffusers and the PEFT (Meituan trainer) layouts, write the diffusers one.

Both layouts hold the same tensors (``<module>.lora_A.weight`` of shape (r, in) and ``<module>.lora_B.weight``
of shape (out, r)); they differ only in the key prefix and where rank/alpha live:

* diffusers: ``pytorch_lora_weights.safetensors``, keys ``transformer.<module>...``; rank/alpha in the
  safetensors metadata (ours: ``lora_rank``/``lora_alpha``; diffusers' own: ``lora_adapter_metadata``).
* PEFT: ``adapter_model.safetensors``, keys ``base_model.model.<module>...``, rank/alpha in
  ``adapter_config.json`` (``r``, ``lora_alpha``, optional ``rank_pattern``/``alpha_pattern``).

Everything is normalised to ``transformer.``-prefixed keys, the form ``load_lora_adapter(prefix="transformer")``
takes.
"""

from __future__ import annotations

import collections
import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

# File names and the official target modules are the contract layer's (clients and the gateway use them).
from longcat.api.names import DIFFUSERS_WEIGHTS, OFFICIAL_TARGET_MODULES, PEFT_CONFIG, PEFT_WEIGHTS  # noqa: F401, E402
from longcat.errors import AdapterNotFound, InvalidArgument

PREFIX = "transformer."
PEFT_PREFIX = "base_model.model."
DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"  # diffusers' own LoraConfig-as-JSON header entry

# Tensor-name endings we know how to load; anything else (kohya ``.alpha``, DoRA, ...) is refused by name.
_A, _B, _B_BIAS = ".lora_A.weight", ".lora_B.weight", ".lora_B.bias"
_OLD_STYLE = {".lora.down.weight": _A, ".lora.up.weight": _B}  # pre-PEFT diffusers names


@dataclass
class LoraFile:
    """One LoRA adapter read from disk, normalised to diffusers keys (``transformer.<module>.lora_A.weight``)."""

    state_dict: dict[str, torch.Tensor]
    rank: int
    alpha: float
    format: str  # "diffusers" | "peft"
    source: Path
    rank_pattern: dict[str, int] = field(default_factory=dict)  # modules whose rank differs from ``rank``
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    use_rslora: bool = False

    def module_names(self) -> list[str]:
        """The transformer modules this adapter touches (without the ``transformer.`` prefix)."""
        return sorted({k[len(PREFIX):-len(_A)] for k in self.state_dict if k.endswith(_A)})

    def lora_config_kwargs(self) -> dict[str, Any]:
        """``peft.LoraConfig`` kwargs for exactly these tensors (full module names, so nothing else is wrapped)."""
        return {
            "r": self.rank,
            "lora_alpha": self.alpha,
            "target_modules": self.module_names(),
            "rank_pattern": dict(self.rank_pattern),
            "alpha_pattern": dict(self.alpha_pattern),
            "use_rslora": self.use_rslora,
            "lora_bias": any(k.endswith(_B_BIAS) for k in self.state_dict),
        }


def resolve_lora_files(path: str | os.PathLike, field: str = "adapters") -> tuple[Path, Path | None, str]:
    """``path`` (a folder or a .safetensors file) -> (weights file, PEFT config file or None, format guess)."""
    p = Path(path)
    if p.is_dir():
        for name, fmt in ((DIFFUSERS_WEIGHTS, "diffusers"), (PEFT_WEIGHTS, "peft")):
            if (p / name).is_file():
                weights = p / name
                break
        else:
            raise AdapterNotFound(f"{str(p)!r} holds neither {DIFFUSERS_WEIGHTS} nor {PEFT_WEIGHTS}", field)
    elif p.is_file():
        if p.suffix != ".safetensors":
            raise InvalidArgument(f"{str(p)!r} is not a .safetensors file (pickled weights are not loaded)", field)
        weights, fmt = p, ("peft" if p.name == PEFT_WEIGHTS else "diffusers")
    else:
        raise AdapterNotFound(f"no LoRA file or folder at {str(p)!r}", field)
    config = weights.parent / PEFT_CONFIG
    return weights, (config if config.is_file() else None), fmt


def read_lora(path: str | os.PathLike, field: str = "adapters") -> LoraFile:
    """Read a LoRA in either layout; raise ``AdapterNotFound``/``InvalidArgument`` (naming ``field``) if unusable."""
    from safetensors import SafetensorError, safe_open

    weights, config_file, fmt = resolve_lora_files(path, field)
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as f:
            header = dict(f.metadata() or {})
            raw = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise InvalidArgument(f"{str(weights)!r} is not a readable safetensors file: {exc}", field) from exc
    if not raw:
        raise InvalidArgument(f"{str(weights)!r} holds no tensors", field)
    if any(k.startswith(PEFT_PREFIX) for k in raw):
        fmt = "peft"  # a PEFT file under another name: the key prefix decides
    state_dict = _normalise_keys(raw, weights, field)
    ranks = _check_pairs(state_dict, weights, field)

    rank = collections.Counter(ranks.values()).most_common(1)[0][0]
    # Per-module exceptions as full-name patterns (``^`` = whole-name match in PEFT), as diffusers writes them.
    rank_pattern = {f"^{m}": r for m, r in ranks.items() if r != rank}
    conf = _config_from(config_file, header) if fmt == "peft" else _config_from(None, header)
    alpha = conf.get("lora_alpha")
    alpha_pattern = dict(conf.get("alpha_pattern") or {})
    if alpha is None:
        # No alpha anywhere: the diffusers convention is alpha == rank (scale 1) for every module.
        alpha, alpha_pattern = rank, {k: float(v) for k, v in rank_pattern.items()}
    try:
        alpha = float(alpha)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{str(weights)!r}: lora_alpha {alpha!r} is not a number", field) from exc
    if not math.isfinite(alpha) or alpha <= 0:
        raise InvalidArgument(f"{str(weights)!r}: lora_alpha must be a positive number, got {alpha}", field)
    return LoraFile(
        state_dict=state_dict,
        rank=int(rank),
        alpha=alpha,
        format=fmt,
        source=weights,
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        use_rslora=bool(conf.get("use_rslora", False)),
    )


def _normalise_keys(raw: dict[str, torch.Tensor], source: Path, field: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, tensor in raw.items():
        name = key
        if name.startswith(PEFT_PREFIX):
            name = PREFIX + name[len(PEFT_PREFIX):]
        elif not name.startswith(PREFIX):
            name = PREFIX + name  # a model-level save (``save_lora_adapter``) has no prefix
        for old, new in _OLD_STYLE.items():
            if name.endswith(old):
                name = name[: -len(old)] + new
        if not name.endswith((_A, _B, _B_BIAS)):
            raise InvalidArgument(
                f"{str(source)!r}: tensor {key!r} is not a plain LoRA weight (lora_A/lora_B); DoRA, LoHa and "
                "kohya-style files are not supported", field)
        if name in out:
            raise InvalidArgument(f"{str(source)!r}: tensor {key!r} appears twice under different prefixes", field)
        out[name] = tensor
    return out


def _check_pairs(sd: dict[str, torch.Tensor], source: Path, field: str) -> dict[str, int]:
    """Every lora_A has its lora_B with a matching rank; all finite floats. Returns {module: rank}."""
    ranks: dict[str, int] = {}
    for key, t in sd.items():
        if not t.is_floating_point():
            raise InvalidArgument(f"{str(source)!r}: tensor {key!r} has non-float dtype {t.dtype}", field)
        if not torch.isfinite(t).all():
            raise InvalidArgument(f"{str(source)!r}: tensor {key!r} holds NaN or infinite values", field)
    modules = {k[len(PREFIX):-len(_A)] for k in sd if k.endswith(_A)} | {
        k[len(PREFIX):-len(_B)] for k in sd if k.endswith(_B)}
    if not modules:
        raise InvalidArgument(f"{str(source)!r} holds no LoRA weights (no lora_A/lora_B tensors)", field)
    for m in sorted(modules):
        a, b = sd.get(PREFIX + m + _A), sd.get(PREFIX + m + _B)
        if a is None or b is None:
            raise InvalidArgument(f"{str(source)!r}: module {m!r} has only one of lora_A/lora_B", field)
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise InvalidArgument(
                f"{str(source)!r}: module {m!r} has lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)}, which "
                "do not form a rank-r product", field)
        ranks[m] = int(a.shape[0])
    for key in sd:
        if key.endswith(_B_BIAS) and key[len(PREFIX):-len(_B_BIAS)] not in modules:
            raise InvalidArgument(f"{str(source)!r}: bias {key!r} has no lora_A/lora_B", field)
    return ranks


def _config_from(config_file: Path | None, header: dict[str, str]) -> dict[str, Any]:
    """rank/alpha settings: adapter_config.json, else the safetensors header (ours over diffusers' JSON)."""
    if config_file is not None:
        try:
            conf = json.loads(config_file.read_text())
        except (OSError, ValueError) as exc:
            raise InvalidArgument(f"{str(config_file)!r} is not valid JSON: {exc}", "adapters") from exc
        return conf if isinstance(conf, dict) else {}
    conf: dict[str, Any] = {}
    if DIFFUSERS_METADATA_KEY in header:
        try:
            meta = json.loads(header[DIFFUSERS_METADATA_KEY])
        except ValueError:
            meta = {}
        if isinstance(meta, dict):
            conf = {k[len(PREFIX):] if k.startswith(PREFIX) else k: v for k, v in meta.items()}
    if "lora_alpha" in header:  # ours, written by save_lora, wins
        conf["lora_alpha"] = header["lora_alpha"]
        conf["use_rslora"] = header.get("lora_use_rslora") == "true"
    return conf


def _adapter_tensors(transformer: torch.nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    """The named adapter's LoRA tensors, keyed ``<module>.lora_A.weight`` (no prefix, no adapter name)."""
    from peft.utils import get_peft_model_state_dict

    if adapter_name not in (getattr(transformer, "peft_config", None) or {}):
        raise InvalidArgument(f"the transformer has no adapter named {adapter_name!r}", "adapter_name")
    sd = get_peft_model_state_dict(transformer, adapter_name=adapter_name)
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def _check_rank_alpha(transformer, adapter_name: str, rank: int | None, alpha: float | None) -> tuple[int, float]:
    config = transformer.peft_config[adapter_name]
    rank = config.r if rank is None else int(rank)
    alpha = config.lora_alpha if alpha is None else float(alpha)
    # A trainer passing values that differ from what it trained with would publish a wrongly scaled adapter.
    if rank != config.r or alpha != float(config.lora_alpha):
        raise InvalidArgument(
            f"rank/alpha {rank}/{alpha} differ from adapter {adapter_name!r}'s {config.r}/{config.lora_alpha}",
            "adapter_name")
    return rank, alpha


def _atomic_save(tensors: dict[str, torch.Tensor], target: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    # Write then rename: a server polling the folder sees the old file or the new one, never half of one.
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata=metadata)
    canonicalize_safetensors(tmp)
    os.replace(tmp, target)


def canonicalize_safetensors(path: Path) -> Path:
    """Rewrite a safetensors file's header in a fixed order (atomically); the tensor bytes are untouched.

    safetensors writes its metadata from a hash map, whose order changes from call to call, so the same
    adapter would otherwise get different file bytes (and hashes) each time it is saved.
    """
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", None)
    ordered = {"__metadata__": dict(sorted(meta.items()))} if meta is not None else {}
    ordered.update(sorted(header.items(), key=lambda kv: (kv[1]["data_offsets"], kv[0])))
    text = json.dumps(ordered, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to 8-byte alignment with spaces
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n:])
    os.replace(tmp, path)
    return path


def save_lora(transformer: torch.nn.Module, adapter_name: str, out_dir: str | os.PathLike,
              rank: int | None = None, alpha: float | None = None) -> Path:
    """Publish ``adapter_name`` as ``out_dir/pytorch_lora_weights.safetensors`` (diffusers format)."""
    rank, alpha = _check_rank_alpha(transformer, adapter_name, rank, alpha)
    config = transformer.peft_config[adapter_name]
    tensors = {PREFIX + k: v for k, v in _adapter_tensors(transformer, adapter_name).items()}
    modules = sorted({k[len(PREFIX):-len(_A)] for k in tensors if k.endswith(_A)})
    # diffusers' own header too, so a plain ``load_lora_adapter(out_dir, prefix="transformer")`` scales right.
    diffusers_meta = {PREFIX + k: v for k, v in {
        "r": rank, "lora_alpha": alpha, "target_modules": modules,
        "rank_pattern": dict(config.rank_pattern or {}), "alpha_pattern": dict(config.alpha_pattern or {}),
        "use_rslora": bool(config.use_rslora)}.items()}
    metadata = {
        "format": "pt",
        "lora_format": "diffusers",
        "lora_rank": str(rank),
        "lora_alpha": repr(float(alpha)),
        "lora_use_rslora": "true" if config.use_rslora else "false",
        DIFFUSERS_METADATA_KEY: json.dumps(diffusers_meta, sort_keys=True),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / DIFFUSERS_WEIGHTS
    _atomic_save(tensors, target, metadata)
    return target


def save_peft_format(transformer: torch.nn.Module, adapter_name: str, out_dir: str | os.PathLike,
                     rank: int | None = None, alpha: float | None = None) -> Path:
    """Write ``adapter_name`` the way a PEFT trainer does (Meituan's layout): weights + adapter_config.json."""
    rank, alpha = _check_rank_alpha(transformer, adapter_name, rank, alpha)
    config = transformer.peft_config[adapter_name]
    tensors = {PEFT_PREFIX + k: v for k, v in _adapter_tensors(transformer, adapter_name).items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    conf = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": alpha,
        "target_modules": sorted(config.target_modules) if not isinstance(config.target_modules, str)
        else config.target_modules,
        "rank_pattern": dict(config.rank_pattern or {}),
        "alpha_pattern": dict(config.alpha_pattern or {}),
        "use_rslora": bool(config.use_rslora),
        "lora_dropout": float(config.lora_dropout),
        "bias": config.bias,
        "init_lora_weights": True,
    }
    (out / PEFT_CONFIG).write_text(json.dumps(conf, indent=2, sort_keys=True) + "\n")
    target = out / PEFT_WEIGHTS
    _atomic_save(tensors, target, {"format": "pt"})
    return target
