"""``longcat``: one entry point for every command. Each subcommand lives in its own module."""

from __future__ import annotations

import argparse
import json
import sys

from longcat.errors import Cancelled, InvalidArgument, LongCatError, NotFound

# Exit codes scripts can rely on.
EXIT_OK, EXIT_ERROR, EXIT_INVALID, EXIT_NOT_FOUND, EXIT_CANCELLED = 0, 1, 2, 3, 130
EXIT_UNAVAILABLE, EXIT_UNAUTHENTICATED = 4, 5

COMMANDS = ("tiny", "edit", "serve", "up", "train", "validate", "cache", "jobs", "adapters", "quality")


def build_parser() -> argparse.ArgumentParser:
    from longcat import __version__

    parser = argparse.ArgumentParser(prog="longcat", description="Serve and fine-tune LongCat-Image-Edit.")
    parser.add_argument("--version", action="version", version=f"longcat {__version__}",
                        help="print the version and exit")
    parser.add_argument("--log-level", default=None,
                        help="DEBUG, INFO, WARNING, ERROR (default $LONGCAT_LOG_LEVEL, else WARNING)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    import importlib

    for name in COMMANDS:
        importlib.import_module(f"longcat.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from longcat.logs import setup_logging

    setup_logging(args.log_level, default_level="WARNING")
    try:
        return int(args.func(args) or EXIT_OK)
    except (InvalidArgument, NotFound, Cancelled, LongCatError) as exc:
        return _fail(args, exc)
    except OSError as exc:  # a file the user named could not be read or written
        return _fail(args, LongCatError(str(exc)))
    except KeyboardInterrupt:
        return _fail(args, Cancelled("interrupted"))


def _fail(args, exc: LongCatError) -> int:
    from longcat.cli.flags import flag_for

    code = {"INVALID_ARGUMENT": EXIT_INVALID, "NOT_FOUND": EXIT_NOT_FOUND, "CANCELLED": EXIT_CANCELLED,
            "UNAVAILABLE": EXIT_UNAVAILABLE, "UNAUTHENTICATED": EXIT_UNAUTHENTICATED}.get(exc.code, EXIT_ERROR)
    if getattr(args, "json", False):
        print(json.dumps({"ok": False, "code": exc.code, "field": exc.field, "flag": flag_for(args, exc.field),
                          "error": str(exc)}))
    else:
        # Name what the user typed: --steps, not the API's num_inference_steps.
        flag = flag_for(args, exc.field)
        text = f"{flag}: {exc.reason}" if flag else str(exc)
        print(f"longcat {args.command}: error: {text}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
