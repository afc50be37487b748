"""Where named adapters live: the storage interface (list, get, put, delete, open) and its local-folder
implementation, holding diffusers or PEFT LoRA files:

* ``root/_owners/<owner>/<name>/v<N>/``: version N of ``owner``'s adapter ``name``, addressed by its canonical
  reference ``owner/name@vN``; written once, never rewritten (a publish adds the next version);
* ``root/<name>/``: a folder placed there by hand (or by a local ``longcat train`` publish), addressed by the
  plain ``name``. ``_owners`` cannot collide with such a name (names start with a letter or digit).

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

from longcat.api.names import DIFFUSERS_WEIGHTS, PEFT_CONFIG, PEFT_WEIGHTS, AdapterRef, parse_adapter_ref, validate_name
from longcat.errors import AdapterNotFound, AlreadyExists, InvalidArgument

ADAPTER_FILES = (DIFFUSERS_WEIGHTS, PEFT_WEIGHTS, PEFT_CONFIG)
OWNERS = "_owners"  # the versioned, owned adapters' subtree


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
        ref = parse_adapter_ref(name, field)
        if not ref.owner:
            if ref.version:
                raise AdapterNotFound(f"no adapter named {name!r} (qualify it as owner/name@vN)", field)
            return self.root / ref.name
        if not ref.version:  # owner/name: its latest version
            versions = self.versions(ref.owner, ref.name)
            ref = AdapterRef(ref.name, ref.owner, versions[-1] if versions else 1)
        return self.root / OWNERS / ref.owner / ref.name / f"v{ref.version}"

    def exists(self, name: str) -> bool:
        try:
            folder = self._folder(name, "adapters.name")
        except (InvalidArgument, AdapterNotFound):
            return False
        return _has_weights(folder)

    def versions(self, owner: str, name: str) -> list[int]:
        """The stored versions of ``owner``'s adapter ``name``, oldest first."""
        folder = self.root / OWNERS / owner / name
        if not folder.is_dir():
            return []
        return sorted(int(p.name[1:]) for p in folder.iterdir()
                      if p.name[:1] == "v" and p.name[1:].isdigit() and _has_weights(p))

    def owned(self) -> list[AdapterRef]:
        """Every owned adapter version in the store (``owner/name@vN``)."""
        base = self.root / OWNERS
        if not base.is_dir():
            return []
        out = []
        for owner in sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for name in sorted(p.name for p in (base / owner).iterdir() if p.is_dir() and not p.name.startswith(".")):
                out.extend(AdapterRef(name, owner, v) for v in self.versions(owner, name))
        return out

    def path_for(self, name: str, field: str = "adapters.name") -> Path:
        folder = self._folder(name, field)
        if not self.exists(name):
            # The message reaches API clients: name the adapter, not the server's folders.
            raise AdapterNotFound(f"no adapter named {name!r}", field)
        return folder

    def list(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and p.name != OWNERS and self.exists(p.name))

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
        """Copy ``files`` in as adapter ``name``; a reader sees the old adapter or the new one, never a mix.

        A canonical ``owner/name@vN`` is written once: ALREADY_EXISTS if that version is there already."""
        ref = parse_adapter_ref(name, "adapter_name")
        if ref.owner:
            return self._put_version(ref, files)
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

    def _put_version(self, ref: AdapterRef, files: Iterable[Path]) -> StoredAdapter:
        if not ref.version:
            raise InvalidArgument(f"storing {ref} needs a version", "adapter_name")
        parent = self.root / OWNERS / ref.owner / ref.name
        parent.mkdir(parents=True, exist_ok=True)
        tmp = parent / f".v{ref.version}.{uuid.uuid4().hex[:8]}.tmp"
        tmp.mkdir()
        try:
            for f in files:
                shutil.copy2(f, tmp / Path(f).name)
            try:  # rename onto an existing (non-empty) folder fails: a version is never rewritten
                tmp.rename(parent / f"v{ref.version}")
            except OSError as exc:
                raise AlreadyExists(f"adapter {ref} already exists", "adapter_name") from exc
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return self.get(str(ref), "adapter_name")

    def delete(self, name: str) -> bool:
        """Drop ``name`` (a hand-placed folder), ``owner/name@vN`` (one version) or ``owner/name`` (all)."""
        ref = parse_adapter_ref(name, "name")
        if ref.owner:
            folder = self.root / OWNERS / ref.owner / ref.name
            if ref.version:
                folder = folder / f"v{ref.version}"
        else:
            folder = self.root / validate_name(name, "name")
        if not folder.exists():
            return False
        trash = folder.parent / f".{folder.name}.{uuid.uuid4().hex[:8]}.deleted"
        folder.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
        return True


def _has_weights(folder: Path) -> bool:
    return (folder / DIFFUSERS_WEIGHTS).is_file() or (folder / PEFT_WEIGHTS).is_file()
