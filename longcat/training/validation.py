"""Validation edits through the serving engine: the first ``num_validation_images`` pairs, each reference
edited with its caption by :class:`longcat.engine.EditEngine` on the training components.

During training the LoRA being trained sits on the transformer; the engine is built without an adapter
manager and asked for no adapters, so it leaves that LoRA active (a manager would disable it). Standalone
(``longcat validate``), the base model renders, plus the run's published adapter when there is one.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from longcat.api.datasets import Pair, read_inside
from longcat.images import decode_image, encode_png
from longcat.training.buckets import bucket_for, fit_to_bucket

log = logging.getLogger(__name__)

VALIDATION_DIR = "validation"


@dataclass
class ValidationItem:
    name: str
    caption: str
    reference: Image.Image     # already cropped to the output's aspect
    width: int
    height: int


def validation_pairs(pairs: list[Pair], count: int) -> list[Pair]:
    """The held-out pairs: the first ``count`` in name order, so every run and resume picks the same ones."""
    return pairs[:count]


def validation_items(pairs: list[Pair], config) -> list[ValidationItem]:
    """The reference of each pair, center-cropped to the validation size's aspect (or its training bucket)."""
    items = []
    for p in pairs:
        image = decode_image(read_inside(p.reference_path, p.roots, p.name), p.name)
        if config.validation_resolution is not None:
            size = config.validation_resolution
        else:
            edit = decode_image(read_inside(p.edit_path, p.roots, p.name), p.name)
            size = bucket_for(*edit.size, p.edit_dataset.resolution, p.edit_dataset.resolution_type)
        items.append(ValidationItem(p.name, p.caption, fit_to_bucket(image, size), *size))
    return items


class Validator:
    """Renders the validation items with the engine; one folder of PNGs per call."""

    def __init__(self, components, config, items: list[ValidationItem], out_root: str | os.PathLike,
                 adapter_manager=None, adapters=()):
        from longcat.engine import EditEngine

        self.engine = EditEngine(components, adapter_manager=adapter_manager)
        self.config = config
        self.items = items
        self.out_root = Path(out_root)
        self.adapters = list(adapters)

    def render(self, label: str) -> list[Path]:
        """Edit every item; write ``<out_root>/<label>/<name>.png``. Touches no global RNG and restores the
        transformer's train/eval mode, so validating never changes what training does next."""
        from longcat.engine import EditRequest

        transformer = self.engine.components.transformer
        was_training = transformer.training
        py_state, np_state = random.getstate(), np.random.get_state()
        out = self.out_root / label
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        try:
            transformer.eval()
            with torch.random.fork_rng(devices=[]):
                for item in self.items:
                    result = self.engine.edit(EditRequest(
                        image=item.reference, prompt=item.caption,
                        negative_prompt=self.config.validation_negative_prompt, width=item.width,
                        height=item.height, num_inference_steps=self.config.validation_num_inference_steps,
                        guidance_scale=self.config.validation_guidance, seed=self._seed(),
                        adapters=self.adapters))
                    paths.append(_write_png(out / (item.name.replace("/", "__") + ".png"), result.image))
        finally:
            transformer.train(was_training)
            random.setstate(py_state)
            np.random.set_state(np_state)
        return paths

    def _seed(self) -> int:
        c = self.config
        return c.validation_seed if c.validation_seed is not None else (c.seed or 0)


def _write_png(path: Path, image: Image.Image) -> Path:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(encode_png(image))
    os.replace(tmp, path)
    return path


@dataclass
class ValidationRun:
    images: list[Path]
    adapter: Path | None      # the adapter file rendered with, None = base model
    pairs: int                # pairs in the (valid) datasets


def run_validation(config, dataloader, model: str | None = None, device: str | None = None,
                   out_dir: str | os.PathLike | None = None) -> ValidationRun:
    """``longcat validate``: check the datasets, then render validation edits with the base model (and the
    adapter published in ``output_dir`` if there is one). ``config``/``dataloader`` are paths or parsed."""
    from longcat.adapters import AdapterManager
    from longcat.api.dataloader import DataloaderConfig, parse_dataloader
    from longcat.api.datasets import validate_datasets
    from longcat.api.training_config import TrainingConfig, parse_config
    from longcat.engine import AdapterRef
    from longcat.models.loading import ALL_COMPONENTS, load_components
    from longcat.training.output import adapter_file

    config = config if isinstance(config, TrainingConfig) else parse_config(config)
    dataloader = dataloader if isinstance(dataloader, DataloaderConfig) else parse_dataloader(dataloader)
    report = validate_datasets(dataloader, config.use_reference_captions)
    components = load_components(model or config.pretrained_model_name_or_path, ALL_COMPONENTS, device=device,
                                 precision=config.base_model_precision)
    weights = adapter_file(config.output_dir)
    manager, adapters = None, []
    if weights is not None:
        manager = AdapterManager(components.transformer)
        manager.load("trained", weights.parent)
        adapters = [AdapterRef("trained", 1.0)]
    items = validation_items(validation_pairs(report.pairs, max(1, config.num_validation_images)), config)
    root = Path(out_dir) if out_dir else Path(config.output_dir) / VALIDATION_DIR
    validator = Validator(components, config, items, root, adapter_manager=manager, adapters=adapters)
    images = validator.render("adapter" if weights is not None else "base")
    return ValidationRun(images, weights, len(report.pairs))
