"""Where named adapters live: the storage interface (list, get, put, delete, open) and its local-folder
implementation, ``root/<name>/`` holding a diffusers or PEFT LoRA file.

The registry (publish, describe, prune), the denoisers (load by name) and the trainer (publish) use only this
interface; an object store would be a second implementation (``path_for`` then materialises a local copy).
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterable, Protocol

from longcat.api.names import DIFFUSERS_WEIGHTS, PEFT_CONFIG, PEFT_WEIGHTS, validate_name
from longcat.errors import AdapterNotFound, InvalidArgument

ADAPTER_FILES = (DIFFUSERS_WEIGHTS, PEFT_WEIGHTS, PEFT_CONFIG)


@dataclass(frozen=True)
class StoredAdapter:
    name: str
    files: dict[str, int] = field(default_factory=dict)  # file name -> size in bytes
    modified_at: float = 0.0

    @property
    def size_bytes(self) -> int:
        return sum(self.files.values())


class AdapterStorage(Protocol):
    def list(self) -> list[str]: ...
    def get(self, name: str, field: str = "adapters.name") -> StoredAdapter: ...
    def put(self, name: str, files: Iterable[Path]) -> StoredAdapter: ...
    def delete(self, name: str) -> bool: ...
    def open(self, name: str, filename: str) -> BinaryIO: ...
    def path_for(self, name: str, field: str = "adapters.name") -> Path: ...


class AdapterStore:
    """The local-folder :class:`AdapterStorage`: one sub-folder per name; writes swap folders atomically."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def _folder(self, name: str, field: str) -> Path:
        return self.root / validate_name(name, field)

    def exists(self, name: str) -> bool:
        try:
            folder = self._folder(name, "adapters.name")
        except InvalidArgument:
            return False
        return (folder / DIFFUSERS_WEIGHTS).is_file() or (folder / PEFT_WEIGHTS).is_file()

    def path_for(self, name: str, field: str = "adapters.name") -> Path:
        folder = self._folder(name, field)
        if not self.exists(name):
            # The message reaches API clients: name the adapter, not the server's folders.
            raise AdapterNotFound(f"no adapter named {name!r}", field)
        return folder

    def list(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.exists(p.name))

    def get(self, name: str, field: str = "adapters.name") -> StoredAdapter:
        folder = self.path_for(name, field)
        files = {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file()}
        return StoredAdapter(name, files, folder.stat().st_mtime)

    def open(self, name: str, filename: str) -> BinaryIO:
        if filename not in ADAPTER_FILES:
            raise InvalidArgument(f"{filename!r} is not an adapter file", "filename")
        path = self.path_for(name) / filename
        if not path.is_file():
            raise AdapterNotFound(f"adapter {name!r} has no {filename}", "filename")
        return path.open("rb")

    def put(self, name: str, files: Iterable[Path]) -> StoredAdapter:
        """Copy ``files`` in as adapter ``name``; a reader sees the old adapter or the new one, never a mix."""
        validate_name(name, "adapter_name")
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
        tmp.mkdir()
        for f in files:
            shutil.copy2(f, tmp / Path(f).name)
        final = self.root / name
        if final.exists():  # republish: swap in the new folder, then drop the old one
            old = self.root / f".{name}.{uuid.uuid4().hex[:8]}.old"
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
        return self.get(name, "adapter_name")

    def delete(self, name: str) -> bool:
        folder = self.root / validate_name(name, "name")
        if not folder.exists():
            return False
        trash = self.root / f".{name}.{uuid.uuid4().hex[:8]}.deleted"
        folder.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
        return True
