"""``TrainingConfig``: the quickstart's ``config.json`` keys, checked all at once.

Wrong values raise one :class:`ConfigError` naming every key at fault; unknown keys are warnings (SimpleTuner
configs carry many options we do not use), collected on the config and logged. Keys may be written
SimpleTuner-CLI style (``--learning_rate``) and values as strings (``"5e-5"``, ``"true"``), as such configs are
often generated from command lines.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
from dataclasses import dataclass, field, fields
from typing import Any, Callable

from longcat.api import jsonc
from longcat.api.names import OFFICIAL_TARGET_MODULES
from longcat.api.training_errors import ConfigError, Problem

log = logging.getLogger(__name__)

BASE_PRECISIONS = ("no_change", "int8-quanto", "fp8-torchao", "bf16", "fp32")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
OPTIMIZERS = ("adamw", "adamw_torch", "adamw_bf16")  # all run as torch AdamW on fp32 LoRA weights
MIXED_PRECISIONS = ("no", "bf16")
LORA_INIT_TYPES = ("gaussian", "default")  # SimpleTuner's key; "default" is PEFT's kaiming-uniform A
EMBEDDINGS_SOURCES = ("in_process", "encoder_service")
MIN_VALIDATION_SIDE, VALIDATION_MULTIPLE = 64, 16  # what the edit engine accepts


class _Bad(ValueError):
    """A value parser's complaint; becomes a :class:`Problem` naming the key."""


@dataclass
class TrainingConfig:
    model_type: str = "lora"
    model_family: str = "longcat_image"
    model_flavour: str = "edit"
    base_model_precision: str = "no_change"
    pretrained_model_name_or_path: str = ""     # "" -> $LONGCAT_MODEL or "tiny", filled in by parse_config
    train_batch_size: int = 1
    gradient_checkpointing: bool = False
    # Defaults where the config is silent follow Meituan's edit-LoRA recipe (train_examples/edit_lora/) and
    # SimpleTuner's quickstart; README "Training defaults" gives each one's source.
    learning_rate: float = 1.77e-5               # Meituan's 1e-4 at batch 32 (4 x 8 GPUs), sqrt-scaled to batch 1
    lr_scheduler: str = "constant_with_warmup"
    lr_warmup_steps: int = 0
    optimizer: str = "adamw"
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0                  # 0 = no clipping
    lora_rank: int = 32                         # Meituan: lora_rank 32
    lora_alpha: float | None = 8.0              # Meituan sets none: PEFT's default 8 (scale 8/32); null -> rank
    lora_init_type: str = "gaussian"            # Meituan: init_lora_weights="gaussian"; "default" = PEFT's kaiming
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(default_factory=lambda: list(OFFICIAL_TARGET_MODULES))
    max_train_steps: int | None = None          # None -> num_train_epochs worth of steps
    num_train_epochs: int = 1
    validation_steps: int = 0                   # 0 = validate at the end only
    validation_guidance: float = 4.5
    validation_num_inference_steps: int = 40
    validation_resolution: tuple[int, int] | None = None   # (width, height); None = each pair's bucket
    validation_seed: int | None = None          # None -> seed
    validation_negative_prompt: str = ""
    num_validation_images: int = 2
    validation_holdout: bool = True             # keep the validation pairs out of training
    aspect_bucket_alignment: int = 64
    output_dir: str = "output/models"
    seed: int | None = None                     # None -> a random seed, recorded in the summary
    checkpointing_steps: int | None = 500       # None/0 = no checkpoints
    checkpoints_total_limit: int | None = None  # None = keep all
    resume_from_checkpoint: str | None = None   # None | "latest" | a checkpoint folder
    caption_dropout_probability: float = 0.1    # Meituan null_text_ratio 0.1 / SimpleTuner: trains the CFG branch
    mixed_precision: str | None = None          # None -> bf16 on a GPU, no on CPU
    use_reference_captions: bool = False
    embeddings_source: str = "in_process"
    encoder_address: str | None = None
    data_backend_config: str | None = None      # SimpleTuner's pointer to the dataloader JSON
    warnings: list[str] = field(default_factory=list, repr=False, compare=False)

    @property
    def effective_lora_alpha(self) -> float:
        return float(self.lora_rank if self.lora_alpha is None else self.lora_alpha)

    def resolved_mixed_precision(self, device_type: str) -> str:
        """bf16 autocast only exists for us on a GPU; on CPU training runs in full precision."""
        if device_type != "cuda":
            if self.mixed_precision == "bf16":
                log.warning("mixed_precision bf16 is ignored on %s: training runs in full precision", device_type)
            return "no"
        return self.mixed_precision or "bf16"

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "warnings"}
        if self.validation_resolution is not None:
            out["validation_resolution"] = "{}x{}".format(*self.validation_resolution)
        return out


# -- value parsers: each returns the clean value or raises _Bad ------------------------------------------


def _int(lo: int | None = None, hi: int | None = None, optional: bool = False) -> Callable[[Any], Any]:
    def parse(v):
        if optional and v is None:
            return None
        if isinstance(v, str):
            try:
                v = float(v.strip()) if any(ch in v for ch in ".eE") else int(v.strip())
            except ValueError:
                raise _Bad(f"must be an integer, got {v!r}") from None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
            raise _Bad(f"must be an integer, got {v!r}")
        v = int(v)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise _Bad(f"must be {_range(lo, hi)}, got {v}")
        return v
    return parse


def _float(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           optional: bool = False) -> Callable[[Any], Any]:
    def parse(v):
        if optional and v is None:
            return None
        if isinstance(v, str):
            try:
                v = float(v.strip())
            except ValueError:
                raise _Bad(f"must be a number, got {v!r}") from None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise _Bad(f"must be a finite number, got {v!r}")
        if lo is not None and (v <= lo if lo_open else v < lo) or hi is not None and v > hi:
            bound = f"greater than {lo}" if lo_open and hi is None else _range(lo, hi)
            raise _Bad(f"must be {bound}, got {v}")
        return float(v)
    return parse


def _range(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f"between {lo} and {hi}"
    return f"at least {lo}" if lo is not None else f"at most {hi}"


def _bool(v):
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
        return v.strip().lower() in ("true", "1", "yes", "on")
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    raise _Bad(f"must be true or false, got {v!r}")


def _choice(values: tuple[str, ...], optional: bool = False, why: str = "") -> Callable[[Any], Any]:
    def parse(v):
        if optional and v is None:
            return None
        if not isinstance(v, str) or v.strip() not in values:
            raise _Bad(f"must be {' or '.join(repr(x) for x in values)}{why}, got {v!r}")
        return v.strip()
    return parse


def _str(optional: bool = False, nonempty: bool = True) -> Callable[[Any], Any]:
    def parse(v):
        if optional and v is None:
            return None
        if not isinstance(v, str) or (nonempty and not v.strip()):
            raise _Bad(f"must be a{' non-empty' if nonempty else ''} string, got {v!r}")
        return v.strip() if nonempty else v
    return parse


def _targets(v):
    if isinstance(v, str):
        v = [t.strip() for t in v.split(",")]
    if not isinstance(v, list) or not v or not all(isinstance(t, str) and t.strip() for t in v):
        raise _Bad(f"must be a non-empty list of module names like {OFFICIAL_TARGET_MODULES[:2]}, got {v!r}")
    return [t.strip() for t in v]


def _resolution(v):
    """"768x768", "768", 768 -> (width, height); also "WxH" with upper-case X or a comma-free list of one."""
    if v is None:
        return None
    text = str(v).strip().lower() if isinstance(v, (str, int)) and not isinstance(v, bool) else None
    parts = text.split("x") if text else []
    try:
        sizes = [int(p.strip()) for p in parts]
    except ValueError:
        sizes = []
    if len(sizes) == 1:
        sizes *= 2
    if len(sizes) != 2:
        raise _Bad(f"must be a size like \"768x768\" or \"768\", got {v!r}")
    for s in sizes:
        if s < MIN_VALIDATION_SIDE or s % VALIDATION_MULTIPLE:
            raise _Bad(f"sides must be multiples of {VALIDATION_MULTIPLE} and at least {MIN_VALIDATION_SIDE}, "
                       f"got {v!r}")
    return sizes[0], sizes[1]


def _resume(v):
    if v is None or (isinstance(v, str) and v.strip().lower() in ("", "none", "null", "false")):
        return None
    if isinstance(v, str):
        return "latest" if v.strip().lower() == "latest" else v.strip()
    raise _Bad(f"must be \"latest\", a checkpoint folder, or null, got {v!r}")


def _mixed(v):
    if v is None:
        return None
    if isinstance(v, str) and v.strip().lower() == "fp16":
        raise _Bad("fp16 mixed precision is not supported (it needs loss scaling); use \"bf16\" or \"no\"")
    return _choice(MIXED_PRECISIONS)(v.strip().lower() if isinstance(v, str) else v)


def _alignment(v):
    v = _int()(v)
    if v != 64:
        raise _Bad(f"must be 64 (LongCat edit buckets sit on the 64-px grid), got {v}")
    return v


def _steps_or_off(v):
    """Step intervals where 0, null and "false" all mean off."""
    if v is None or v is False or (isinstance(v, str) and v.strip().lower() in ("", "none", "null", "false")):
        return None
    v = _int(lo=0)(v)
    return v or None


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "model_type": _choice(("lora",), why=" (only LoRA training is supported)"),
    "model_family": _choice(("longcat_image",)),
    "model_flavour": _choice(("edit",), why=" (this stack trains the edit flavour)"),
    "base_model_precision": _choice(BASE_PRECISIONS),
    "pretrained_model_name_or_path": _str(optional=True),
    "train_batch_size": _int(lo=1),
    "gradient_checkpointing": _bool,
    "learning_rate": _float(lo=0, lo_open=True),
    "lr_scheduler": _choice(LR_SCHEDULERS),
    "lr_warmup_steps": _int(lo=0),
    "optimizer": _choice(OPTIMIZERS),
    "adam_beta1": _float(0, 1),
    "adam_beta2": _float(0, 1),
    "adam_weight_decay": _float(lo=0),
    "adam_epsilon": _float(lo=0, lo_open=True),
    "max_grad_norm": _float(lo=0),
    "lora_rank": _int(lo=1, hi=1024),
    "lora_alpha": _float(lo=0, lo_open=True, optional=True),
    "lora_init_type": _choice(LORA_INIT_TYPES),
    "lora_dropout": _float(0, 0.99),
    "lora_target_modules": _targets,
    "max_train_steps": _int(lo=1, optional=True),
    "num_train_epochs": _int(lo=1),
    "validation_steps": _steps_or_off,
    "validation_guidance": _float(0, 30),
    "validation_num_inference_steps": _int(1, 200),
    "validation_resolution": _resolution,
    "validation_seed": _int(lo=0, optional=True),
    "validation_negative_prompt": _str(nonempty=False),
    "num_validation_images": _int(lo=0),
    "validation_holdout": _bool,
    "aspect_bucket_alignment": _alignment,
    "output_dir": _str(),
    "seed": _int(lo=0, optional=True),
    "checkpointing_steps": _steps_or_off,
    "checkpoints_total_limit": _int(lo=1, optional=True),
    "resume_from_checkpoint": _resume,
    "caption_dropout_probability": _float(0, 1),
    "mixed_precision": _mixed,
    "use_reference_captions": _bool,
    "embeddings_source": _choice(EMBEDDINGS_SOURCES),
    "encoder_address": _str(optional=True),
    "data_backend_config": _str(optional=True),
}
KNOWN_KEYS = tuple(_PARSERS)


def normalize_key(key: str) -> str:
    """``--learning_rate`` / ``--learning-rate`` -> ``learning_rate``."""
    return key.strip().lstrip("-").replace("-", "_")


def parse_config(source: str | os.PathLike | dict, field: str = "config") -> TrainingConfig:
    """Parse a config file (JSON or jsonc) or dict; raise :class:`ConfigError` listing every wrong value."""
    raw, path = jsonc.load(source, field)
    if not isinstance(raw, dict):
        raise ConfigError([Problem(field, f"must be a JSON object of settings, got {type(raw).__name__}")], path)
    problems: list[Problem] = []
    warnings: list[str] = []
    values: dict[str, Any] = {}
    seen: dict[str, str] = {}
    for key, value in raw.items():
        name = normalize_key(str(key))
        if name in seen:
            problems.append(Problem(name, f"given twice (as {seen[name]!r} and {key!r})"))
            continue
        seen[name] = key
        parser = _PARSERS.get(name)
        if parser is None:
            hint = difflib.get_close_matches(name, KNOWN_KEYS, n=1)
            warnings.append(f"unknown key {key!r} ignored" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
            continue
        try:
            values[name] = parser(value)
        except _Bad as exc:
            problems.append(Problem(name, str(exc)))

    _check_together(values, problems)
    if problems:
        raise ConfigError(problems, path)
    if not values.get("pretrained_model_name_or_path"):
        values["pretrained_model_name_or_path"] = os.environ.get("LONGCAT_MODEL") or "tiny"
    config = TrainingConfig(**values)
    config.warnings = warnings
    for w in warnings:
        log.warning("config: %s", w, extra={"event": "config_warning", "source": path})
    return config


def _check_together(values: dict[str, Any], problems: list[Problem]) -> None:
    """Rules that involve more than one key."""
    if values.get("embeddings_source") == "encoder_service" and not values.get("encoder_address"):
        problems.append(Problem("encoder_address", "is required when embeddings_source is \"encoder_service\" "
                                                   "(host:port of the encoder service)"))
    steps = values.get("max_train_steps")
    warmup = values.get("lr_warmup_steps")
    if steps and warmup and warmup > steps:
        problems.append(Problem("lr_warmup_steps", f"is {warmup}, more than max_train_steps ({steps})"))
