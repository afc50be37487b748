"""``longcat tiny --out DIR [--seed N]``: build the offline tiny model in diffusers format."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("tiny", help="build the tiny random LongCat-Image-Edit model (offline, deterministic)")
    p.add_argument("--out", required=True, help="folder to write the diffusers-format model into")
    p.add_argument("--seed", type=int, default=0, help="same seed -> byte-identical weights (default 0)")
    p.add_argument("--turbo", action="store_true", help="the Edit-Turbo variant: its folder defaults to 8 steps, no CFG")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=run)


def run(args) -> int:
    from longcat.models.tiny import build_tiny_model

    path = build_tiny_model(args.out, seed=args.seed, turbo=args.turbo)
    if args.json:
        print(json.dumps({"ok": True, "path": str(path), "seed": args.seed, "turbo": args.turbo}))
    else:
        print(f"tiny model (seed {args.seed}) written to {path}")
    return 0
