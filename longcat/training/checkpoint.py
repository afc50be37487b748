"""Checkpoints that resume bit-exactly: adapter, optimizer, LR scheduler, step, and every RNG state.

Layout: ``<output_dir>/checkpoints/checkpoint-<step>/`` holding ``pytorch_lora_weights.safetensors`` (the
usable adapter, ``save_lora`` format), ``optimizer.pt``, ``scheduler.pt``, ``rng.pt`` and
``training_state.json``. A checkpoint is written into a hidden temporary folder and renamed into place, so
``latest`` never picks a half-written one; old ones rotate out past ``checkpoints_total_limit``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from longcat.adapters import save_lora
from longcat.adapters.formats import DIFFUSERS_WEIGHTS
from longcat.errors import InvalidArgument, NotFound
from longcat.training.loop import TrainState
from longcat.training.lora import ADAPTER_NAME, load_lora_weights

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_FILE = "training_state.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")
FORMAT_VERSION = 1


def checkpoints_dir(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / CHECKPOINTS


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and (p / STATE_FILE).is_file()]
    return sorted(found)


def remove_partial(output_dir: str | os.PathLike) -> None:
    """Drop temporary folders a crash left mid-write."""
    root = checkpoints_dir(output_dir)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".tmp-") or p.name.startswith(".old-"):
                shutil.rmtree(p, ignore_errors=True)


def resolve_resume(value: str | None, output_dir: str | os.PathLike) -> Path | None:
    """``resume_from_checkpoint`` -> a checkpoint folder, or None for a fresh start."""
    if value is None:
        return None
    if value == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            log.info("no checkpoint to resume from; starting fresh", extra={"event": "resume_none"})
            return None
        return found[-1][1]
    path = Path(value)
    if not path.is_absolute() and not path.exists():
        path = checkpoints_dir(output_dir) / value  # "checkpoint-200" relative to the run's checkpoints
    if not (path / STATE_FILE).is_file():
        raise NotFound(f"{value!r} is not a checkpoint folder (no {STATE_FILE})", "resume_from_checkpoint")
    return path


def read_meta(path: Path) -> dict[str, Any]:
    return json.loads((path / STATE_FILE).read_text())


def save_checkpoint(state: TrainState, output_dir: str | os.PathLike, meta: dict[str, Any], rank: int,
                    alpha: float, total_limit: int | None = None) -> Path:
    root = checkpoints_dir(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"checkpoint-{state.step}"
    tmp = root / f".tmp-checkpoint-{state.step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_lora(state.transformer, ADAPTER_NAME, tmp, rank=rank, alpha=alpha)
    torch.save(state.optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(state.lr_scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(capture_rng(state.generator), tmp / "rng.pt")
    full = dict(meta, step=state.step, losses=state.losses, format_version=FORMAT_VERSION)
    (tmp / STATE_FILE).write_text(json.dumps(full, indent=1) + "\n")
    _fsync_tree(tmp)  # on disk before it is renamed into place: a machine crash never leaves a torn "latest"
    if final.exists():  # the same step again after a resume: swap, never leave a moment with none
        old = root / f".old-checkpoint-{state.step}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(root)
    rotate(output_dir, total_limit)
    return final


def _fsync_tree(folder: Path) -> None:
    for p in folder.iterdir():
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # a platform without directory fds: the rename is still atomic, just not yet durable
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def rotate(output_dir: str | os.PathLike, total_limit: int | None) -> list[Path]:
    if not total_limit:
        return []
    found = list_checkpoints(output_dir)
    removed = [p for _, p in found[: max(0, len(found) - total_limit)]]
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
        log.info("checkpoint rotated out", extra={"event": "checkpoint_removed", "path": str(p)})
    return removed


def load_checkpoint(path: Path, state: TrainState, expect: dict[str, Any]) -> dict[str, Any]:
    """Restore ``state`` from ``path``; refuse a checkpoint of another adapter shape or model."""
    meta = read_meta(path)
    for key in ("lora", "model_fingerprint"):
        if key in expect and meta.get(key) != expect[key]:
            raise InvalidArgument(f"{path} was trained with {key} {meta.get(key)!r}, this run has "
                                  f"{expect[key]!r}", "resume_from_checkpoint")
    if "data_fingerprint" in expect and meta.get("data_fingerprint") != expect["data_fingerprint"]:
        log.warning("the dataset changed since this checkpoint; resuming, but not bit-exactly",
                    extra={"event": "resume_data_changed", "path": str(path)})
    load_lora_weights(state.transformer, path / DIFFUSERS_WEIGHTS)
    state.optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    state.lr_scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    restore_rng(torch.load(path / "rng.pt", weights_only=True), state.generator)
    state.step = int(meta["step"])
    state.losses = [float(x) for x in meta.get("losses", [])][: state.step]
    return meta


def capture_rng(generator: torch.Generator) -> dict[str, Any]:
    version, mt, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": {"version": version, "state": list(mt), "gauss": gauss},
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached": float(cached)},
        "generator": generator.get_state(),
    }


def restore_rng(saved: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(saved["torch"])
    if saved["cuda"] and torch.cuda.is_available() and len(saved["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(saved["cuda"])
    py = saved["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    n = saved["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    generator.set_state(saved["generator"])
