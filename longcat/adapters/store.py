"""Where named adapters live on disk: ``root/<name>/`` holding a diffusers or PEFT LoRA file."""

from __future__ import annotations

import os
import re
from pathlib import Path

from longcat.errors import AdapterNotFound, InvalidArgument
from longcat.adapters.formats import DIFFUSERS_WEIGHTS, PEFT_WEIGHTS

# One path component, no hidden files, no ``..``: a request-supplied name can never leave ``root``.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def validate_name(name: object, field: str = "adapters.name") -> str:
    if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name:
        raise InvalidArgument(
            f"adapter name {name!r} is invalid: use 1-64 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit, and no '..'", field)
    return name


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
