"""Edit-Turbo: the distilled 8-step, no-CFG LongCat-Image-Edit, served by the same engine.

Turbo is the same architecture with other weights; what differs is how a request with unset steps/guidance is
filled in. Those defaults come from the model folder: a ``longcat_defaults.json`` there wins (the tiny Turbo
variant writes one: ``longcat tiny --turbo``); else a folder or hub id naming "Turbo" (as
``meituan-longcat/LongCat-Image-Edit-Turbo``) gets :data:`TURBO`; else :data:`STANDARD`.
Torch-free: the gateway fills defaults in before queueing.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from longcat.errors import InvalidArgument

DEFAULTS_FILE = "longcat_defaults.json"


@dataclass(frozen=True)
class ModelDefaults:
    num_inference_steps: int = 50
    guidance_scale: float = 4.5   # <= 1: no CFG (one forward per step)

    @property
    def turbo(self) -> bool:
        return self.guidance_scale <= 1.0 and self.num_inference_steps <= 16


STANDARD = ModelDefaults()
TURBO = ModelDefaults(num_inference_steps=8, guidance_scale=1.0)


def read_model_defaults(model: str | os.PathLike | None) -> ModelDefaults:
    """The request defaults of a model folder or hub id (see the module doc)."""
    if not model:
        return STANDARD
    path = Path(str(model))
    file = path / DEFAULTS_FILE
    if file.is_file():
        try:
            raw = json.loads(file.read_text())
            return ModelDefaults(num_inference_steps=int(raw.get("num_inference_steps", STANDARD.num_inference_steps)),
                                 guidance_scale=float(raw.get("guidance_scale", STANDARD.guidance_scale)))
        except (ValueError, TypeError, AttributeError) as exc:
            raise InvalidArgument(f"{file} is not valid: {exc}", "model") from None
    return TURBO if "turbo" in path.name.lower() else STANDARD


def write_model_defaults(folder: str | os.PathLike, defaults: ModelDefaults) -> Path:
    file = Path(folder) / DEFAULTS_FILE
    file.write_text(json.dumps(asdict(defaults), indent=2) + "\n")
    return file
