"""The adapter registry: metadata in Redis (``lc:adapters``), weights in the shared adapter store folder.

Publishing copies into the store atomically (a temp folder renamed into place), then records the
metadata, so a denoiser that sees the name can always load the whole file.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import redis

from longcat.adapters.header import describe
from longcat.adapters.store import ADAPTER_FILES, AdapterStorage
from longcat.api.keys import Keys
from longcat.api.names import validate_name
from longcat.errors import AdapterNotFound, AlreadyExists, InvalidArgument


@dataclass
class AdapterInfo:
    name: str
    rank: int = 0
    alpha: float = 0.0
    format: str = ""
    size_bytes: int = 0
    created_at: float = 0.0
    job_id: str = ""
    owner: str = ""


class AdapterRegistry:
    def __init__(self, client: redis.Redis, store: AdapterStorage, keys: Keys = Keys()):
        self.r = client
        self.store = store
        self.key = keys.adapters

    def publish(self, name: str, source: str | Path, owner: str = "", job_id: str = "") -> AdapterInfo:
        """Copy the LoRA folder or file ``source`` into the store as ``name`` and register it."""
        validate_name(name, "adapter_name")
        src = Path(source)
        if not src.exists():
            raise AdapterNotFound(f"no LoRA file or folder at {str(src)!r}", "adapter")
        files = [src] if src.is_file() else [p for p in src.iterdir() if p.name in ADAPTER_FILES]
        stored = self.store.put(name, files)
        lora = describe(self.store, name, "adapter")
        info = AdapterInfo(name=name, rank=lora.rank, alpha=float(lora.alpha), format=lora.format,
                           size_bytes=stored.size_bytes, created_at=time.time(), job_id=job_id, owner=owner)
        self.r.hset(self.key, name, json.dumps(asdict(info)))
        return info

    @contextlib.contextmanager
    def claim(self, name: str, ttl_s: int = 600):
        """Hold ``name`` for one writer (an upload): a second upload of the same name meanwhile is refused."""
        key, token = f"{self.key}:claim:{validate_name(name, 'name')}", uuid.uuid4().hex
        if not self.r.set(key, token, nx=True, ex=ttl_s):
            raise AlreadyExists(f"adapter {name!r} is being uploaded by another request", "name")
        try:
            yield
        finally:
            if self.r.get(key) == token.encode():
                self.r.delete(key)

    def exists(self, name: str) -> bool:
        return self.store.exists(name)

    def get(self, name: str, field: str = "name") -> AdapterInfo:
        validate_name(name, field)
        raw = self.r.hget(self.key, name)
        if raw is not None and self.store.exists(name):
            return AdapterInfo(**json.loads(raw))
        if self.store.exists(name):  # placed in the folder by hand: describe it from the file
            stored = self.store.get(name, field)
            lora = describe(self.store, name, field)
            return AdapterInfo(name=name, rank=lora.rank, alpha=float(lora.alpha), format=lora.format,
                               size_bytes=stored.size_bytes, created_at=stored.modified_at)
        raise AdapterNotFound(f"no adapter named {name!r}", field)

    def list(self) -> list[AdapterInfo]:
        names = set(self.store.list()) | {n.decode() for n in self.r.hkeys(self.key)}
        out = []
        for name in sorted(names):
            try:
                out.append(self.get(name))
            except (AdapterNotFound, InvalidArgument):
                continue
        return out

    def delete(self, name: str, owner: str | None = None, field: str = "name") -> AdapterInfo:
        info = self.get(name, field)
        if owner is not None and info.owner and info.owner != owner:
            raise AdapterNotFound(f"no adapter named {name!r}", field)  # others' adapters are not yours to drop
        self.r.hdel(self.key, name)
        self.store.delete(name)
        return info
