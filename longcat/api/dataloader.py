"""The dataloader JSON of the quickstart: a list of datasets; an edit dataset names its reference dataset in
``conditioning_data``, and a dataset named there is the reference (conditioning) side.

This module only checks the structure (types of keys). Whether folders, pairs, captions and images are
usable is :mod:`longcat.api.datasets`'s job, which reports everything at once.
"""

from __future__ import annotations

import difflib
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from longcat.api import jsonc
from longcat.api.training_errors import ConfigError, Problem

log = logging.getLogger(__name__)

CAPTION_STRATEGIES = ("textfile", None)
RESOLUTION_TYPES = ("pixel_area", "area", "pixel")
DATASET_KEYS = ("id", "type", "instance_data_dir", "caption_strategy", "resolution", "resolution_type",
                "cache_dir_vae", "conditioning_data", "disabled", "dataset_type", "cache_dir", "default")


@dataclass
class DatasetConfig:
    id: str
    instance_data_dir: str
    type: str = "local"
    caption_strategy: str | None = None
    resolution: float = 1024            # pixel_area: area = resolution²; area: megapixels; pixel: shorter side
    resolution_type: str = "pixel_area"
    cache_dir_vae: str | None = None    # None -> <output_dir>/cache/vae/<id>
    conditioning_data: list[str] = field(default_factory=list)
    index: int = 0                      # position in the file, for messages

    @property
    def label(self) -> str:
        return f"datasets[{self.id}]"


@dataclass
class DataloaderConfig:
    datasets: list[DatasetConfig]
    text_cache_dir: str | None = None   # from a {"dataset_type": "text_embeds", "cache_dir": ...} entry
    source: str | None = None
    warnings: list[str] = field(default_factory=list, repr=False)
    # Set when the paths arrived over the network (api.training.confine): every file read must resolve inside
    # these folders (a symlink leading out of them is refused). Empty: a local run, no confinement.
    roots: tuple = ()

    def by_id(self) -> dict[str, DatasetConfig]:
        return {d.id: d for d in self.datasets}

    def edit_datasets(self) -> list[DatasetConfig]:
        return [d for d in self.datasets if d.conditioning_data]

    def referenced_ids(self) -> set[str]:
        return {ref for d in self.datasets for ref in d.conditioning_data}


def parse_dataloader(source: str | os.PathLike | list, field_name: str = "dataloader") -> DataloaderConfig:
    raw, path = jsonc.load(source, field_name)
    if isinstance(raw, dict) and isinstance(raw.get("datasets"), list):
        raw = raw["datasets"]  # also accept {"datasets": [...]}
    if not isinstance(raw, list):
        raise ConfigError([Problem(field_name, "must be a JSON list of datasets")], path)
    problems: list[Problem] = []
    warnings: list[str] = []
    datasets: list[DatasetConfig] = []
    text_cache_dir = None
    seen_ids: set[str] = set()
    for i, entry in enumerate(raw):
        where = f"datasets[{i}]"
        if not isinstance(entry, dict):
            problems.append(Problem(where, f"must be an object, got {type(entry).__name__}"))
            continue
        if entry.get("disabled") is True or entry.get("disable") is True:
            continue
        ds_id = entry.get("id")
        id_ok = isinstance(ds_id, str) and bool(ds_id.strip())
        if id_ok:
            where = f"datasets[{ds_id}]"
            if ds_id in seen_ids:
                problems.append(Problem(f"{where}.id", "is used by more than one dataset"))
            seen_ids.add(ds_id)
        else:
            problems.append(Problem(f"{where}.id", f"must be a non-empty string, got {ds_id!r}"))
        if entry.get("dataset_type") == "text_embeds":
            cache = entry.get("cache_dir")
            if not isinstance(cache, str) or not cache.strip():
                problems.append(Problem(f"{where}.cache_dir", "a text_embeds dataset needs a cache_dir"))
            else:
                text_cache_dir = cache
            continue
        ds = _parse_dataset(entry, i, where, problems, warnings)
        if ds is not None and id_ok:
            datasets.append(ds)
    if not datasets and not problems:
        problems.append(Problem(field_name, "lists no image datasets"))
    if problems:
        raise ConfigError(problems, path)
    for w in warnings:
        log.warning("dataloader: %s", w, extra={"event": "config_warning", "source": path})
    return DataloaderConfig(datasets=datasets, text_cache_dir=text_cache_dir, source=path, warnings=warnings)


def _parse_dataset(entry: dict[str, Any], index: int, where: str, problems: list[Problem],
                   warnings: list[str]) -> DatasetConfig | None:
    before = len(problems)
    for key in entry:
        if key not in DATASET_KEYS:
            hint = difflib.get_close_matches(key, DATASET_KEYS, n=1)
            warnings.append(f"{where}: unknown key {key!r} ignored" + (f" (did you mean {hint[0]!r}?)" if hint else ""))

    def text(key: str, required: bool) -> str | None:
        v = entry.get(key)
        if v is None and not required:
            return None
        if not isinstance(v, str) or not v.strip():
            problems.append(Problem(f"{where}.{key}", f"must be a non-empty string, got {v!r}"))
            return None
        return v

    ds_type = entry.get("type", "local")
    if ds_type != "local":
        problems.append(Problem(f"{where}.type", f"must be \"local\" (only local folders are supported), got {ds_type!r}"))
    folder = text("instance_data_dir", required=True)
    caption = entry.get("caption_strategy")
    if caption not in CAPTION_STRATEGIES:
        problems.append(Problem(f"{where}.caption_strategy", f"must be \"textfile\" or null, got {caption!r}"))
    resolution = entry.get("resolution", 1024)
    if isinstance(resolution, str):
        try:
            resolution = float(resolution)
        except ValueError:
            pass
    if isinstance(resolution, bool) or not isinstance(resolution, (int, float)) or not resolution > 0:
        problems.append(Problem(f"{where}.resolution", f"must be a positive number, got {resolution!r}"))
    res_type = entry.get("resolution_type", "pixel_area")
    if res_type not in RESOLUTION_TYPES:
        problems.append(Problem(f"{where}.resolution_type", f"must be one of {RESOLUTION_TYPES}, got {res_type!r}"))
    elif res_type != "area" and isinstance(resolution, (int, float)) and 0 < resolution < 64:
        problems.append(Problem(f"{where}.resolution", f"is {resolution} pixels, less than one 64-px bucket (use "
                                                       "resolution_type \"area\" for megapixels)"))
    cache = text("cache_dir_vae", required=False)
    cond = entry.get("conditioning_data", [])
    if isinstance(cond, str):
        cond = [cond]
    if cond is None:
        cond = []
    if not isinstance(cond, list) or not all(isinstance(c, str) and c for c in cond):
        problems.append(Problem(f"{where}.conditioning_data", f"must be a list of dataset ids, got {cond!r}"))
        cond = []
    if len(problems) > before:
        return None
    return DatasetConfig(id=str(entry.get("id")), instance_data_dir=folder, type=ds_type, caption_strategy=caption,
                         resolution=float(resolution), resolution_type=res_type, cache_dir_vae=cache,
                         conditioning_data=list(cond), index=index)
