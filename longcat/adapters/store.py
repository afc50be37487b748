"""Where named adapters live on disk: ``root/<name>/`` holding a diffusers or PEFT LoRA file."""

from __future__ import annotations

import os
from pathlib import Path

from longcat.api.names import DIFFUSERS_WEIGHTS, PEFT_WEIGHTS, validate_name
from longcat.errors import AdapterNotFound, InvalidArgument

class AdapterStore:
    """A folder of adapters, one sub-folder per name (what the trainer publishes into)."""

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
