"""``longcat serve {encoder,denoiser,gateway,trainer}``: run one service in the foreground."""

from __future__ import annotations

import importlib

SERVICES = ("encoder", "denoiser", "gateway", "trainer")


def register(sub) -> None:
    p = sub.add_parser("serve", help="run one service (flags also read LONGCAT_* environment variables)",
                       add_help=False)
    p.add_argument("service", choices=SERVICES)
    p.add_argument("rest", nargs="...", help="the service's own flags (longcat serve SERVICE --help)")
    p.set_defaults(func=run)


def run(args) -> int:
    module = importlib.import_module(f"services.{args.service}.server")
    module.main(args.rest)
    return 0
