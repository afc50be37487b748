"""Emptying a training run's tensor caches (the quickstart: "on cache misses or shape errors, clear both VAE
caches and regenerate"). The next run rebuilds them.

Only cache files are removed (``<key>.safetensors`` and leftover temporary files, in the two-letter shard
folders :class:`~longcat.training.cache.TensorCache` writes), never anything else a folder may hold: a
``cache_dir_vae`` pointed at the wrong place must not cost a user their images.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_CACHE_FILE = re.compile(r"^\.?[0-9a-f]{64}\.safetensors(\.tmp\d+)?$")
_SHARD = re.compile(r"^[0-9a-f]{2}$")


@dataclass
class Cleared:
    name: str       # "vae[edit-images]", "text"
    path: Path
    files: int
    bytes: int


def cache_folders(config, dataloader) -> list[tuple[str, Path]]:
    """Every cache a training run with this config and dataloader uses: one VAE cache per image dataset
    (edit and reference), and the text-embedding cache — where the trainer puts them."""
    out = Path(config.output_dir)
    folders = [(f"vae[{d.id}]", Path(d.cache_dir_vae) if d.cache_dir_vae else out / "cache" / "vae" / d.id)
               for d in dataloader.datasets]
    folders.append(("text", Path(dataloader.text_cache_dir) if dataloader.text_cache_dir else out / "cache" / "text"))
    return folders


def clear_cache(name: str, folder: Path) -> Cleared:
    files = size = 0
    if folder.is_dir():
        for shard in [p for p in folder.iterdir() if p.is_dir() and _SHARD.match(p.name)]:
            for f in shard.iterdir():
                if f.is_file() and _CACHE_FILE.match(f.name):
                    size += f.stat().st_size
                    f.unlink()
                    files += 1
            if not any(shard.iterdir()):
                shard.rmdir()
    return Cleared(name, folder, files, size)
