"""``longcat validate``: check a training config and its datasets, then render validation edits (the base
model's, or the run's adapter when ``output_dir`` already holds one)."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("validate", help="check training config + datasets and render validation edits")
    p.add_argument("--config", required=True, help="training config.json (the quickstart's keys)")
    p.add_argument("--dataloader", default=None,
                   help="dataloader JSON (default: the config's data_backend_config)")
    p.add_argument("--model", default=None, help="diffusers folder, hub id or 'tiny' (default: the config's "
                                                 "pretrained_model_name_or_path)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto")
    p.add_argument("--out", default=None, help="folder for the images (default <output_dir>/validation/)")
    p.add_argument("--check-only", action="store_true", help="only check config and datasets; load no model")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from longcat.errors import InvalidArgument
    from longcat.training import parse_config, parse_dataloader, run_validation, validate_datasets

    config = parse_config(args.config)
    source = args.dataloader or config.data_backend_config
    if not source:
        raise InvalidArgument("give --dataloader (or data_backend_config in the config)", "dataloader")
    dataloader = parse_dataloader(source)
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
