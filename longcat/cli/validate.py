"""``longcat validate``: check a training config and its datasets, then render validation edits (the base
model's, or the run's adapter when ``output_dir`` already holds one).

The quickstart's own command works as written (``simpletuner`` -> ``longcat``): its flags override the
config's keys, and the config defaults to ``config/config.json`` as SimpleTuner's does."""

from __future__ import annotations

import json
from pathlib import Path

DEFAULT_CONFIG = "config/config.json"
# The quickstart's validate flags; each overrides the config key of the same name.
QUICKSTART_FLAGS = {
    "model_family": "longcat_image (the only family served here)",
    "model_flavour": "edit (the only flavour served here)",
    "validation_resolution": "WIDTHxHEIGHT of the validation edits, e.g. 768x768",
    "validation_guidance": "guidance scale of the validation edits, e.g. 4.5",
    "validation_num_inference_steps": "denoising steps of the validation edits, e.g. 40",
}


def load_training_files(config_path: str, dataloader_path: str | None, overrides: dict | None = None):
    """config.json (+ overrides) and its dataloader JSON: ``--dataloader``, else the config's
    ``data_backend_config`` (relative to the working directory, then to the config's folder)."""
    from longcat.api import jsonc
    from longcat.errors import InvalidArgument, NotFound
    from longcat.training import parse_config, parse_dataloader

    raw, _ = jsonc.load(config_path, "config")
    if isinstance(raw, dict) and overrides:
        raw = {**raw, **{k: v for k, v in overrides.items() if v is not None}}
    config = parse_config(raw)
    source = dataloader_path
    if source is None:
        named = config.data_backend_config
        if not named:
            raise InvalidArgument("give --dataloader, or set data_backend_config in the config", "dataloader")
        found = [p for p in (Path(named).expanduser(), Path(config_path).parent / named) if p.is_file()]
        if not found:
            raise NotFound(f"{named!r} (the config's data_backend_config) is not a file; give --dataloader "
                           "or fix the path", "data_backend_config")
        source = str(found[0])
    return config, parse_dataloader(source)


def register(sub) -> None:
    p = sub.add_parser("validate", help="check training config + datasets and render validation edits")
    p.add_argument("--config", default=DEFAULT_CONFIG,
                   help=f"training config.json, the quickstart's keys (default {DEFAULT_CONFIG})")
    p.add_argument("--dataloader", default=None,
                   help="dataloader JSON (default: the config's data_backend_config)")
    p.add_argument("--model", default=None, help="diffusers folder, hub id or 'tiny' (default: the config's "
                                                 "pretrained_model_name_or_path)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto")
    p.add_argument("--out", default=None, help="folder for the images (default <output_dir>/validation/)")
    p.add_argument("--check-only", action="store_true", help="only check config and datasets; load no model")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    quick = p.add_argument_group("the quickstart's flags (override the config)")
    for key, helptext in QUICKSTART_FLAGS.items():
        quick.add_argument(f"--{key}", f"--{key.replace('_', '-')}", dest=key, default=None, help=helptext)
    p.set_defaults(func=run)


def run(args) -> int:
    from longcat.training import run_validation, validate_datasets

    config, dataloader = load_training_files(args.config, args.dataloader,
                                             {key: getattr(args, key) for key in QUICKSTART_FLAGS})
    warnings = config.warnings + dataloader.warnings
    if args.check_only:
        report = validate_datasets(dataloader, config.use_reference_captions)
        summary = {"ok": True, "pairs": len(report.pairs), "images": [], "adapter": None,
                   "warnings": warnings + report.warnings}
    else:
        result = run_validation(config, dataloader, model=args.model, device=args.device, out_dir=args.out)
        summary = {"ok": True, "pairs": result.pairs,
                   "images": [str(p) for p in result.images],
                   "adapter": str(result.adapter) if result.adapter else None, "warnings": warnings}
    if args.json:
        print(json.dumps(summary))
    else:
        for w in summary["warnings"]:
            print(f"warning: {w}")
        print(f"datasets ok: {summary['pairs']} pairs")
        if summary["images"]:
            who = f"adapter {summary['adapter']}" if summary["adapter"] else "base model"
            print(f"validation edits ({who}):")
            for p in summary["images"]:
                print(f"  {p}")
    return 0
