"""``longcat serve {encoder,denoiser,gateway,trainer}``: run one service in the foreground."""

from __future__ import annotations

import importlib
import sys

SERVICES = ("encoder", "denoiser", "gateway", "trainer")


SUMMARY = {
    "encoder": "Qwen2.5-VL prompt encoder (sees the reference image), gRPC Encoder",
    "denoiser": "LongCat transformer + VAE: takes edit jobs from Redis, gRPC Denoiser",
    "gateway": "the public gRPC API (EditService, TrainingService, AdapterService); runs no model",
    "trainer": "Celery worker running LoRA training jobs, gRPC Trainer",
}


def register(sub) -> None:
    import argparse

    services = "\n".join(f"  {name:9s} {text}" for name, text in SUMMARY.items())
    # add_help=False: `longcat serve SERVICE --help` is the service's own help (every flag and its
    # LONGCAT_* variable); `longcat serve --help` alone is answered in run().
    p = sub.add_parser("serve", help="run one service in the foreground (see longcat serve --help)",
                       add_help=False, formatter_class=argparse.RawDescriptionHelpFormatter,
                       usage="longcat serve SERVICE [--help] [service flags ...]",
                       description="Run one service in the foreground. Every flag --foo-bar also reads "
                                   "LONGCAT_FOO_BAR (flags win).\n\nservices:\n" + services +
                                   "\n\n`longcat serve SERVICE --help` lists the service's flags.")
    p.add_argument("service", nargs="?", choices=SERVICES, help="the service to run")
    p.add_argument("rest", nargs="...", help="the service's own flags (longcat serve SERVICE --help)")
    p.add_argument("-h", "--help", dest="serve_help", action="store_true", help="show this help and exit")
    p.set_defaults(func=run, parser=p)


def run(args) -> int:
    if args.service is None:
        if args.serve_help:
            args.parser.print_help()
            return 0
        args.parser.print_usage()
        print("longcat serve: error: name a service: " + ", ".join(SERVICES), file=sys.stderr)
        return 2
    module = importlib.import_module(f"services.{args.service}.server")
    module.main(args.rest)
    return 0
