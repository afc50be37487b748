"""A training submission as the user wrote it (the quickstart's JSON, local paths), and the rewrite that
makes it work against a remote gateway: upload the dataset folders, point the JSON at the uploaded copies,
and turn absolute cache/output paths into ones relative to the caller's area on the server."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from longcat.api import jsonc
from longcat.client import requests as rq
from longcat.errors import InvalidArgument, NotFound

PATH_FIELDS = ("instance_data_dir", "cache_dir_vae", "cache_dir", "output_dir")


def _load(source, field: str, base: Path):
    if isinstance(source, (dict, list)):
        return json.loads(json.dumps(source)), base
    path = Path(source)
    if path.is_file():
        return jsonc.loads(path.read_text(), field), path.parent
    text = str(source).strip()
    if not text.startswith(("{", "[")):  # meant as a file name: say it is missing, not "not valid JSON"
        raise NotFound(f"no such file {str(source)!r}", field)
    return jsonc.loads(text, field), base


def dataloader_from_config(config: dict, config_dir: Path, base: Path | None = None) -> Path:
    """The quickstart's ``train --config FILE`` alone: the dataloader JSON named by the config's
    ``data_backend_config``, relative to the working directory (as SimpleTuner reads it) or to the config."""
    named = config.get("data_backend_config") or config.get("--data_backend_config")
    if not named:
        raise InvalidArgument("give --dataloader, or set data_backend_config in the config", "dataloader")
    for candidate in ((base or Path.cwd()) / Path(str(named)).expanduser(), config_dir / str(named)):
        if candidate.is_file():
            return candidate
    raise NotFound(f"{named!r} (the config's data_backend_config) is not a file; "
                   "give --dataloader or fix the path", "data_backend_config")


@dataclass
class LocalTrainingJob:
    config: dict
    dataloader: list
    name: str
    config_dir: Path
    dataloader_dir: Path

    @classmethod
    def load(cls, config, dataloader, name: str = "", base_dir=None) -> "LocalTrainingJob":
        base = Path(base_dir or os.getcwd())
        cfg, cfg_dir = _load(config, "config", base)
        if dataloader is None and isinstance(cfg, dict):
            dataloader = dataloader_from_config(cfg, cfg_dir, base)
        loader, loader_dir = _load(dataloader, "dataloader", base)
        if isinstance(loader, dict) and isinstance(loader.get("datasets"), list):
            loader = loader["datasets"]
        if not isinstance(cfg, dict) or not isinstance(loader, list):
            raise InvalidArgument("the config must be a JSON object and the dataloader a JSON list", "config")
        if not name:
            out = cfg.get("output_dir") or cfg.get("--output_dir") or "longcat-lora"
            name = Path(str(out)).name
        return cls(cfg, loader, name, cfg_dir, loader_dir)

    def request(self):
        return rq.training_request(self.config, self.dataloader, self.name, request_id=self._request_id())

    def absolutize(self) -> None:
        """Local relative paths mean the user's folders (as the quickstart's tool reads them), not folders
        that happen to share the name on the server: send them absolute, so the gateway either can read them
        in place or refuses them (and they get uploaded)."""
        for d in self.image_datasets():
            local = self.local_folder(str(d["instance_data_dir"]))
            if local is not None:
                d["instance_data_dir"] = str(local)
            for key in ("cache_dir_vae",):
                if d.get(key) and not os.path.isabs(str(d[key])):
                    d[key] = str((Path.cwd() / str(d[key])).resolve())
        for key in ("output_dir", "--output_dir"):
            if key in self.config and not os.path.isabs(str(self.config[key])):
                self.config[key] = str((Path.cwd() / str(self.config[key])).resolve())

    def _request_id(self) -> str:
        # Stable per content: resubmitting the same job (a retry) never queues it twice.
        blob = json.dumps([self.config, self.dataloader, self.name], sort_keys=True).encode()
        return "train-" + hashlib.sha256(blob).hexdigest()[:24]

    def local_folder(self, raw: str) -> Path | None:
        """A dataset folder as the user meant it: relative to the working directory or to the JSON file."""
        for base in (Path.cwd(), self.dataloader_dir):
            p = Path(raw) if os.path.isabs(raw) else base / raw
            if p.is_dir():
                return p.resolve()
        return None

    def image_datasets(self) -> list[dict]:
        return [d for d in self.dataloader if isinstance(d, dict) and d.get("instance_data_dir")
                and d.get("dataset_type") != "text_embeds" and not d.get("disabled")]

    def can_upload(self) -> bool:
        return all(self.local_folder(str(d["instance_data_dir"])) for d in self.image_datasets())

    @staticmethod
    def refused_paths(exc: InvalidArgument) -> bool:
        """Did the gateway refuse the job because of where its files are (not because of what they hold)?"""
        text = f"{exc.field or ''} {exc}"
        return any(f in text for f in PATH_FIELDS) or "does not exist" in text or "outside" in text

    def upload(self, client) -> None:
        folders = {str(d["id"]): self.local_folder(str(d["instance_data_dir"])) for d in self.image_datasets()}
        digest = hashlib.sha256(json.dumps(sorted((k, str(v)) for k, v in folders.items())).encode()).hexdigest()
        upload_name = f"{self.name}-{digest[:8]}"
        response = client.upload_dataset(upload_name, folders)
        for d in self.image_datasets():
            d["instance_data_dir"] = response.folders[str(d["id"])]
            if d.get("cache_dir_vae"):  # keep caches apart per dataset, under the caller's area
                d["cache_dir_vae"] = f"cache/{upload_name}/{d['id']}/vae"
        for d in self.dataloader:
            if isinstance(d, dict) and d.get("dataset_type") == "text_embeds" and d.get("cache_dir"):
                d["cache_dir"] = f"cache/{upload_name}/text"
        for key in ("output_dir", "--output_dir"):
            if key in self.config and os.path.isabs(str(self.config[key])):
                self.config[key] = f"outputs/{Path(str(self.config[key])).name}"
