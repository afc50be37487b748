"""Check an uploaded LoRA against the served model, and convert a PEFT file to diffusers keys, torch-free.

The gateway never loads torch, so both work on the safetensors *header* alone (the format: 8-byte little-endian
header length, a JSON header ``{name: {dtype, shape, data_offsets}, "__metadata__": {...}}``, then the raw tensor
bytes). The model's side is a shapes manifest read the same way from its transformer's safetensors file(s):
every 2-D ``<module>.weight`` is a linear layer a LoRA may target, with its (out, in) features.

The full numeric check (finite values) happens where the weights are loaded (:mod:`longcat.adapters.formats`).
"""

from __future__ import annotations

import collections
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from longcat.errors import AdapterMismatch, InvalidArgument, NotFound

PREFIX = "transformer."
PEFT_PREFIX = "base_model.model."
DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"
MAX_HEADER = 100 << 20
FLOAT_DTYPES = {"F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2"}
_DTYPE_BYTES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "F8_E4M3": 1, "F8_E5M2": 1}
_A, _B, _B_BIAS = ".lora_A.weight", ".lora_B.weight", ".lora_B.bias"
_OLD_STYLE = {".lora.down.weight": _A, ".lora.up.weight": _B}
TRANSFORMER_WEIGHTS = "diffusion_pytorch_model.safetensors"


@dataclass(frozen=True)
class Header:
    tensors: dict[str, dict]      # name -> {"dtype", "shape", "data_offsets"}
    metadata: dict[str, str]
    data_start: int               # byte offset of the tensor data
    size: int                     # the whole file's size


def read_header(f: BinaryIO, size: int, field: str = "file") -> Header:
    """Parse and sanity-check a safetensors header from ``f`` (positioned at 0) of ``size`` bytes."""
    not_st = "is not a safetensors file"
    raw = f.read(8)
    if len(raw) < 8:
        raise InvalidArgument(f"{not_st} (shorter than its 8-byte header length)", field)
    (n,) = struct.unpack("<Q", raw)
    if n > MAX_HEADER or 8 + n > size:
        raise InvalidArgument(f"{not_st} (header length {n} does not fit the {size}-byte file)", field)
    try:
        header = json.loads(f.read(n))
    except ValueError as exc:
        raise InvalidArgument(f"{not_st} (its header is not JSON: {exc})", field) from exc
    if not isinstance(header, dict):
        raise InvalidArgument(f"{not_st} (its header is not a JSON object)", field)
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise InvalidArgument(f"{not_st} (__metadata__ is not an object)", field)
    data_len = size - 8 - n
    for name, t in header.items():
        ok = (isinstance(t, dict) and isinstance(t.get("dtype"), str) and isinstance(t.get("shape"), list)
              and all(isinstance(d, int) and d >= 0 for d in t["shape"])
              and isinstance(t.get("data_offsets"), list) and len(t["data_offsets"]) == 2)
        if not ok:
            raise InvalidArgument(f"{not_st} (entry {name!r} lacks dtype/shape/data_offsets)", field)
        begin, end = t["data_offsets"]
        if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end <= data_len):
            raise InvalidArgument(f"{not_st} (tensor {name!r} lies outside the file: truncated?)", field)
        width = _DTYPE_BYTES.get(t["dtype"])
        if width is not None and end - begin != width * math.prod(t["shape"]):
            raise InvalidArgument(f"{not_st} (tensor {name!r}: {end - begin} bytes for shape {t['shape']})", field)
    return Header(header, {str(k): str(v) for k, v in meta.items()}, 8 + n, size)


def read_header_file(path: Path, field: str = "file") -> Header:
    with open(path, "rb") as f:
        return read_header(f, os.fstat(f.fileno()).st_size, field)


# ---- the model's side ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelShapes:
    """The served transformer's linear layers: module name -> (out_features, in_features)."""

    linears: dict[str, tuple[int, int]]
    source: str = ""

    @classmethod
    def from_model(cls, model: str) -> "ModelShapes":
        """A model folder (or ``tiny``) -> the shapes in its ``transformer/`` safetensors header(s)."""
        from longcat.api.models import is_tiny, tiny_dir

        folder = tiny_dir(model) if is_tiny(model) else Path(model)
        return cls.from_transformer_dir(folder / "transformer")

    @classmethod
    def from_transformer_dir(cls, folder: Path) -> "ModelShapes":
        index = folder / f"{TRANSFORMER_WEIGHTS}.index.json"
        if index.is_file():  # sharded: the index names the shard of every tensor
            shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
            files = [folder / s for s in shards]
        else:
            files = [folder / TRANSFORMER_WEIGHTS]
        if not files or not all(f.is_file() for f in files):
            raise NotFound(f"no transformer weights (safetensors) in {str(folder)!r}", "model")
        linears: dict[str, tuple[int, int]] = {}
        for f in files:
            for name, t in read_header_file(f, "model").tensors.items():
                if name.endswith(".weight") and len(t["shape"]) == 2:
                    linears[name[: -len(".weight")]] = (t["shape"][0], t["shape"][1])
        return cls(linears, str(folder))


# ---- the adapter's side --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckedLora:
    format: str          # "diffusers" | "peft"
    rank: int
    alpha: float
    modules: list[str]


def diffusers_key(key: str) -> str | None:
    """A LoRA tensor name in any supported layout -> ``transformer.<module>.lora_{A,B}.weight``; None if it
    is no plain LoRA weight (DoRA magnitudes, kohya ``.alpha``...)."""
    name = key
    if name.startswith(PEFT_PREFIX):
        name = PREFIX + name[len(PEFT_PREFIX):]
    elif not name.startswith(PREFIX):
        name = PREFIX + name
    for old, new in _OLD_STYLE.items():
        if name.endswith(old):
            name = name[: -len(old)] + new
    return name if name.endswith((_A, _B, _B_BIAS)) else None


def check_lora(header: Header, shapes: ModelShapes, peft_config: dict | None = None,
               field: str = "file") -> CheckedLora:
    """Every tensor a LoRA weight for a linear layer of the served transformer, with matching shapes."""
    if not header.tensors:
        raise InvalidArgument("holds no tensors", field)
    fmt = "peft" if any(k.startswith(PEFT_PREFIX) for k in header.tensors) else "diffusers"
    sd: dict[str, dict] = {}
    for key, t in header.tensors.items():
        name = diffusers_key(key)
        if name is None:
            raise InvalidArgument(f"tensor {key!r} is not a plain LoRA weight (lora_A/lora_B); DoRA, LoHa and "
                                  "kohya-style files are not supported", field)
        if name in sd:
            raise InvalidArgument(f"tensor {key!r} appears twice under different prefixes", field)
        if t["dtype"] not in FLOAT_DTYPES:
            raise InvalidArgument(f"tensor {key!r} has dtype {t['dtype']}, not a float type", field)
        sd[name] = t
    modules = sorted({k[len(PREFIX):].rsplit(".lora_", 1)[0] for k in sd})
    ranks: dict[str, int] = {}
    for m in modules:
        a, b = sd.get(f"{PREFIX}{m}{_A}"), sd.get(f"{PREFIX}{m}{_B}")
        if a is None or b is None:
            raise InvalidArgument(f"module {m!r} has only one of lora_A/lora_B", field)
        if m not in shapes.linears:
            raise AdapterMismatch(f"tensor for module {m!r} targets no linear layer of the served transformer "
                                  "(unknown key: an adapter for another model?)", field)
        out_f, in_f = shapes.linears[m]
        (ra, ia), (ob, rb) = (a["shape"] + [0, 0])[:2], (b["shape"] + [0, 0])[:2]
        if len(a["shape"]) != 2 or len(b["shape"]) != 2 or ra != rb or ia != in_f or ob != out_f:
            raise AdapterMismatch(
                f"module {m!r} has lora_A {a['shape']} and lora_B {b['shape']}; the served transformer needs "
                f"[r, {in_f}] and [{out_f}, r] (shape mismatch: an adapter for another model size?)", field)
        bias = sd.get(f"{PREFIX}{m}{_B_BIAS}")
        if bias is not None and bias["shape"] != [out_f]:
            raise AdapterMismatch(f"module {m!r} has lora_B.bias {bias['shape']}, needs [{out_f}]", field)
        ranks[m] = ra
    if not ranks:
        raise InvalidArgument("holds no LoRA weights (no lora_A/lora_B tensors)", field)
    rank = collections.Counter(ranks.values()).most_common(1)[0][0]
    alpha = header.metadata.get("lora_alpha")
    if alpha is None and peft_config:
        alpha = peft_config.get("lora_alpha")
    if alpha is None and DIFFUSERS_METADATA_KEY in header.metadata:
        try:
            meta = json.loads(header.metadata[DIFFUSERS_METADATA_KEY])
            alpha = meta.get("lora_alpha", meta.get(f"{PREFIX}lora_alpha")) if isinstance(meta, dict) else None
        except ValueError:
            alpha = None
    try:
        alpha = float(rank if alpha is None else alpha)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"lora_alpha {alpha!r} is not a number", field) from exc
    if not math.isfinite(alpha) or alpha <= 0:
        raise InvalidArgument(f"lora_alpha must be a positive number, got {alpha}", field)
    return CheckedLora(fmt, int(rank), alpha, modules)


def parse_peft_config(text: str, field: str = "peft_config") -> dict | None:
    if not text.strip():
        return None
    try:
        conf = json.loads(text)
    except ValueError as exc:
        raise InvalidArgument(f"is not valid JSON: {exc}", field) from exc
    if not isinstance(conf, dict):
        raise InvalidArgument("must be a JSON object (PEFT's adapter_config.json)", field)
    if conf.get("peft_type", "LORA") != "LORA":
        raise InvalidArgument(f"peft_type {conf.get('peft_type')!r} is not LORA", field)
    for key in ("r", "lora_alpha"):
        if key in conf and (not isinstance(conf[key], (int, float)) or conf[key] <= 0):
            raise InvalidArgument(f"{key} must be a positive number, got {conf[key]!r}", field)
    return conf


# ---- PEFT -> diffusers, header only ----------------------------------------------------------------------


def diffusers_header_bytes(header: Header, peft_config: dict | None = None) -> bytes:
    """The 8-byte length + JSON header of the same file with diffusers keys (the tensor bytes that follow
    are unchanged), with rank/alpha written into its metadata as ``save_lora`` does."""
    tensors = {diffusers_key(k) or k: v for k, v in header.tensors.items()}
    meta = dict(header.metadata)
    if peft_config is not None or "lora_alpha" not in meta:
        ranks = [t["shape"][0] for k, t in tensors.items() if k.endswith(_A)]
        rank = collections.Counter(ranks).most_common(1)[0][0] if ranks else 0
        conf = peft_config or {}
        alpha = float(conf.get("lora_alpha", meta.get("lora_alpha", rank)))
        modules = sorted({k[len(PREFIX):-len(_A)] for k in tensors if k.endswith(_A)})
        meta.update({"format": "pt", "lora_format": "diffusers", "lora_rank": str(rank), "lora_alpha": repr(alpha),
                     "lora_use_rslora": "true" if conf.get("use_rslora") else "false",
                     DIFFUSERS_METADATA_KEY: json.dumps({f"{PREFIX}{k}": v for k, v in {
                         "r": rank, "lora_alpha": alpha, "target_modules": modules,
                         "rank_pattern": conf.get("rank_pattern") or {}, "alpha_pattern": conf.get("alpha_pattern") or {},
                         "use_rslora": bool(conf.get("use_rslora"))}.items()}, sort_keys=True)})
    ordered: dict = {"__metadata__": dict(sorted(meta.items()))}
    ordered.update(sorted(tensors.items(), key=lambda kv: (kv[1]["data_offsets"], kv[0])))
    text = json.dumps(ordered, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def iter_file(f: BinaryIO, start: int, chunk_size: int) -> Iterator[bytes]:
    f.seek(start)
    while True:
        data = f.read(chunk_size)
        if not data:
            return
        yield data
