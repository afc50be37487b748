"""``longcat train --config CONFIG.json [--dataloader DATALOADER.json]``: submit a LoRA training job to the
stack (uploading local dataset folders when the gateway cannot read them in place) and follow it."""

from __future__ import annotations

import json
from pathlib import Path

from longcat.cli.remote import add_gateway_args, client, follow


def register(sub) -> None:
    p = sub.add_parser("train", help="submit a LoRA training job (the quickstart's config + dataloader JSON)")
    p.add_argument("--config", required=True, help="config.json (the quickstart's keys)")
    p.add_argument("--dataloader", default=None, help="dataloader JSON (edit dataset + linked reference dataset); "
                                                       "default: the config's data_backend_config")
    p.add_argument("--name", default="", help="adapter name to publish (default: output_dir's last part)")
    p.add_argument("--wait", action="store_true", help="follow the job to its end (progress, validation images)")
    p.add_argument("--upload", choices=("auto", "always", "never"), default="auto",
                   help="send local dataset folders to the gateway: when it can't read them (auto), always, never")
    p.add_argument("--results", default=None,
                   help="with --wait: folder for loss.png, validation/grid.png and the validation edits "
                        "(default: the config's output_dir)")
    p.add_argument("--save-validation", default=None,
                   help="with --wait: folder for the validation edits (default RESULTS/validation)")
    add_gateway_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from longcat.client.sync import _job_error
    from longcat.v1 import edit_pb2

    with client(args) as lc:
        job = lc.train(args.config, args.dataloader, name=args.name, upload=args.upload)
        results = Path(args.results or _output_dir(args.config))
        if not args.json:
            print(f"training job {job.id} queued (adapter {job.adapter_name})", flush=True)
        if not args.wait:
            if args.json:
                print(json.dumps({"ok": True, "job_id": job.id, "adapter_name": job.adapter_name}))
            return 0
        saved: list[Path] = []
        final = follow(lc, job.id, bars=not args.json, events_json=args.json,
                       save_dir=Path(args.save_validation) if args.save_validation else results / "validation",
                       results_dir=results, saved=saved)
    if final.state != edit_pb2.SUCCEEDED:
        raise _job_error(final)
    if not args.json:
        ref = final.adapter_ref or final.adapter_name
        print(f"adapter {ref!r} published at step {final.step}; edit with --adapter {final.adapter_name} (its "
              f"newest version) or --adapter {ref} (this one)")
        for path in saved:
            print(f"  {path}")
    return 0


def _output_dir(config_path: str) -> str:
    """The config's output_dir as the user wrote it (SimpleTuner puts a run's results there)."""
    from longcat.api import jsonc

    try:
        raw, _ = jsonc.load(config_path, "config")
    except Exception:  # the submission already read it; a race here must not lose the run's pictures
        raw = {}
    out = raw.get("output_dir") or raw.get("--output_dir") if isinstance(raw, dict) else None
    return str(out or "longcat-results")
