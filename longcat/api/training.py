"""A training submission: the quickstart's config.json + dataloader JSON, parsed and confined to the roots.

Used twice with the same code: by the gateway before anything is queued (a clear INVALID_ARGUMENT, nothing
started) and by the trainer worker when it runs the job. Every dataset folder and cache folder must resolve
inside the data root and ``output_dir`` inside the output root — with API keys on, inside the caller's own
area (``<root>/<owner>/``). Relative paths are taken relative to that area; ``..`` and symlinks that leave it
are refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from longcat.api import jsonc
from longcat.api.dataloader import DataloaderConfig, parse_dataloader
from longcat.api.datasets import resolve_inside
from longcat.api.models import check_model_reference
from longcat.api.names import validate_name
from longcat.api.training_config import TrainingConfig, parse_config
from longcat.errors import InvalidArgument
from longcat.v1 import training_pb2

ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class Roots:
    data: Path
    outputs: Path
    per_owner: bool = False  # API keys on: each caller gets <root>/<owner>/

    @classmethod
    def make(cls, data: str, outputs: str, per_owner: bool = False) -> "Roots":
        return cls(Path(os.path.expanduser(data)).resolve(), Path(os.path.expanduser(outputs)).resolve(), per_owner)

    def area(self, root: Path, owner: str) -> Path:
        path = root / validate_name(owner, "owner") if self.per_owner and owner != ANONYMOUS else root
        path.mkdir(parents=True, exist_ok=True)
        return path

    def data_area(self, owner: str) -> Path:
        return self.area(self.data, owner)

    def output_area(self, owner: str) -> Path:
        return self.area(self.outputs, owner)


@dataclass
class TrainingSubmission:
    config: TrainingConfig
    dataloader: DataloaderConfig
    adapter_name: str

    @classmethod
    def from_request(cls, req: training_pb2.SubmitTrainingRequest, roots: Roots, owner: str,
                     job_id: str = "") -> "TrainingSubmission":
        config = parse_config(json_shaped(req.config_json or "{}", "config_json", dict), field="config_json")
        check_model_reference(config.pretrained_model_name_or_path, "config_json.pretrained_model_name_or_path")
        dataloader = parse_dataloader(json_shaped(req.dataloader_json or "[]", "dataloader_json", (list, dict)),
                                      field_name="dataloader_json")
        name = req.adapter_name or Path(config.output_dir).name
        validate_name(name, "adapter_name")
        confine(config, dataloader, roots, owner)
        if job_id:
            # Each job works in its own folder: two jobs naming the same output_dir never share checkpoints,
            # and a redelivered job finds exactly its own. The adapter is published to the registry by name.
            config.output_dir = str(Path(config.output_dir) / job_id)
        return cls(config, dataloader, name)


def json_shaped(text: str, field: str, shape):
    """Parsed JSON of the expected shape (a bare number or string would be taken for a file path later)."""
    value = jsonc.loads(text, field)
    if not isinstance(value, shape):
        raise InvalidArgument(f"must be a JSON {'object' if shape is dict else 'list (or an object)'}, "
                              f"not {type(value).__name__}", field)
    return value


def confine(config: TrainingConfig, dataloader: DataloaderConfig, roots: Roots, owner: str) -> None:
    """Resolve every path of the job inside the caller's areas (in place), or raise INVALID_ARGUMENT."""
    data = [roots.data_area(owner)]
    dataloader.roots = tuple(data)  # and every file under the dataset folders (symlinks resolved) in there too
    for i, ds in enumerate(dataloader.datasets):
        ds.instance_data_dir = str(resolve_inside(ds.instance_data_dir, data,
                                                  f"dataloader_json[{i}].instance_data_dir"))
        if ds.cache_dir_vae:
            ds.cache_dir_vae = str(resolve_inside(ds.cache_dir_vae, data, f"dataloader_json[{i}].cache_dir_vae"))
    if dataloader.text_cache_dir:
        dataloader.text_cache_dir = str(resolve_inside(dataloader.text_cache_dir, data,
                                                       "dataloader_json.text_embeds.cache_dir"))
    config.output_dir = str(resolve_inside(config.output_dir, [roots.output_area(owner)], "config_json.output_dir"))
    resume = config.resume_from_checkpoint
    if resume and resume != "latest" and (os.path.isabs(resume) or "/" in resume or os.sep in resume):
        # A checkpoint folder to start from: only one of the caller's own outputs (never another tenant's).
        config.resume_from_checkpoint = str(resolve_inside(resume, [roots.output_area(owner)],
                                                           "config_json.resume_from_checkpoint"))
