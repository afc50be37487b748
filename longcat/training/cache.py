"""Content-addressed tensor caches on disk (safetensors), checked on every read.

A file's name is a hash of everything the tensor depends on (image bytes, bucket, model fingerprint, ...),
so a changed image or model simply misses. A file that is truncated, holds the wrong key or shape, or
non-finite values is treated as a miss and rewritten, never trained on. Writes go to a temporary file then
``os.replace``, so a crash mid-write never leaves a half file under a valid name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

log = logging.getLogger(__name__)

KEY_META = "longcat_cache_key"


def cache_key(**parts: object) -> str:
    """A stable hex key from named parts (order-independent, JSON-encoded)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    rebuilt: int = 0  # files that existed but were unusable (corrupt, wrong shape, non-finite)
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "rebuilt": self.rebuilt}


class TensorCache:
    """One folder of ``<key>.safetensors`` files holding a single tensor each."""

    def __init__(self, root: str | os.PathLike, name: str):
        self.root = Path(root)
        self.name = name  # for logs: "vae[edit-images]", "text"
        self.stats = CacheStats()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def get_or_create(self, key: str, create: Callable[[], torch.Tensor],
                      check: Callable[[torch.Tensor], str | None] = lambda t: None) -> Path:
        """Return the file for ``key``, creating it with ``create()`` if absent or unusable.

        ``check(tensor)`` returns a reason the cached tensor is wrong (e.g. its shape), or None.
        """
        path = self.path(key)
        if path.exists():
            reason = self._problem(path, key, check)
            if reason is None:
                self.stats.hits += 1
                return path
            self.stats.rebuilt += 1
            self.stats.reasons.append(f"{path.name}: {reason}")
            log.warning("cache file unusable, rebuilding", extra={"event": "cache_rebuild", "cache": self.name,
                                                                 "path": str(path), "reason": reason})
        else:
            self.stats.misses += 1
        tensor = create().detach().to("cpu").contiguous()
        problem = _finite_problem(tensor) or check(tensor)
        if problem:  # never cache (or train on) a broken encoding
            raise ValueError(f"{self.name}: freshly computed tensor is unusable: {problem}")
        self._write(path, key, tensor)
        return path

    @staticmethod
    def load(path: Path) -> torch.Tensor:
        return _read(path)[0]

    def _problem(self, path: Path, key: str, check) -> str | None:
        try:
            tensor, metadata = _read(path)
        except Exception as exc:  # truncated/garbage files raise various safetensors/OS/JSON errors
            return f"unreadable ({type(exc).__name__}: {exc})"
        if metadata.get(KEY_META) != key:
            return "key mismatch"
        return _finite_problem(tensor) or check(tensor)

    def _write(self, path: Path, key: str, tensor: torch.Tensor) -> None:
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        save_file({"tensor": tensor}, str(tmp), metadata={KEY_META: key})
        os.replace(tmp, path)


def _read(path: Path) -> tuple[torch.Tensor, dict[str, str]]:
    """(tensor, metadata) from the file's bytes. Not memory-mapped: a cache file replaced or truncated by
    another process while we hold the tensor must not crash us with SIGBUS."""
    from safetensors.torch import load

    data = Path(path).read_bytes()
    header_len = struct.unpack("<Q", data[:8])[0]
    metadata = json.loads(data[8:8 + header_len]).get("__metadata__") or {}
    return load(data)["tensor"], metadata


def _finite_problem(t: torch.Tensor) -> str | None:
    if not t.is_floating_point():
        return f"dtype {t.dtype} is not floating point"
    if not torch.isfinite(t).all():
        return "holds NaN or infinite values"
    return None
