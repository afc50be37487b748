"""The adapter registry: metadata in Redis (``lc:adapters``), weights in the shared adapter store folder.

Publishing copies into the store atomically (a temp folder renamed into place), then records the
metadata, so a denoiser that sees the name can always load the whole file.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import redis

from longcat.adapters.store import AdapterStore
from longcat.api.keys import Keys
from longcat.api.names import DIFFUSERS_WEIGHTS, PEFT_WEIGHTS, validate_name
from longcat.errors import AdapterNotFound, InvalidArgument


def read_lora(path, field: str):
    """The LoRA reader (safetensors + torch), imported only where a file must be read: publishing, or
    describing an adapter placed in the folder by hand. Listing published adapters never loads torch."""
    from longcat.adapters.formats import read_lora as read

    return read(path, field=field)


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
    def __init__(self, client: redis.Redis, store: AdapterStore, keys: Keys = Keys()):
        self.r = client
        self.store = store
        self.key = keys.adapters

    def publish(self, name: str, source: str | Path, owner: str = "", job_id: str = "") -> AdapterInfo:
        """Copy the LoRA folder or file ``source`` into the store as ``name`` and register it."""
        validate_name(name, "adapter_name")
        lora = read_lora(source, field="adapter")
        src = Path(source)
        files = [src] if src.is_file() else [p for p in src.iterdir() if p.name in
                                             (DIFFUSERS_WEIGHTS, PEFT_WEIGHTS, "adapter_config.json")]
        self.store.root.mkdir(parents=True, exist_ok=True)
        tmp = self.store.root / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
        tmp.mkdir()
        for f in files:
            shutil.copy2(f, tmp / f.name)
        final = self.store.root / name
        if final.exists():  # republish: swap in the new folder, then drop the old one
            old = self.store.root / f".{name}.{uuid.uuid4().hex[:8]}.old"
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
        info = AdapterInfo(name=name, rank=lora.rank, alpha=float(lora.alpha), format=lora.format,
                           size_bytes=sum(p.stat().st_size for p in final.iterdir()), created_at=time.time(),
                           job_id=job_id, owner=owner)
        self.r.hset(self.key, name, json.dumps(asdict(info)))
        return info

    def get(self, name: str, field: str = "name") -> AdapterInfo:
        validate_name(name, field)
        raw = self.r.hget(self.key, name)
        if raw is not None and self.store.exists(name):
            return AdapterInfo(**json.loads(raw))
        if self.store.exists(name):  # placed in the folder by hand: describe it from the file
            folder = self.store.path_for(name, field)
            lora = read_lora(folder, field=field)
            return AdapterInfo(name=name, rank=lora.rank, alpha=float(lora.alpha), format=lora.format,
                               size_bytes=sum(p.stat().st_size for p in folder.iterdir() if p.is_file()),
                               created_at=folder.stat().st_mtime)
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
        folder = self.store.root / name
        if folder.exists():
            trash = self.store.root / f".{name}.{uuid.uuid4().hex[:8]}.deleted"
            folder.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
        return info
