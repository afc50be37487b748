"""``longcat adapters {list,show,delete}``: the adapter registry behind the gateway."""

from __future__ import annotations

import json
import time

from longcat.cli.output import as_dict, emit_list
from longcat.cli.remote import add_gateway_args, client


def _line(a) -> str:
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(a.created_at)) if a.created_at else "-"
    return f"{a.name:32s} rank {a.rank:<4d} alpha {a.alpha:<6g} {a.format:9s} {a.size_bytes / 1e6:8.2f} MB  {when}"


def register(sub) -> None:
    p = sub.add_parser("adapters", help="list, show or delete LoRA adapters")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    verbs.add_parser("list", help="every adapter, by name")
    for name in ("show", "delete"):
        verbs.add_parser(name, help=f"{name} one adapter").add_argument("name", help="the adapter's name")
    for v in verbs.choices.values():
        add_gateway_args(v)
    p.set_defaults(func=run)


def run(args) -> int:
    with client(args) as lc:
        if args.verb == "list":
            emit_list(lc.list_adapters(), args, _line, "no adapters")
            return 0
        a = lc.get_adapter(args.name) if args.verb == "show" else lc.delete_adapter(args.name)
        print(json.dumps(as_dict(a)) if args.json else ("deleted " if args.verb == "delete" else "") + _line(a))
    return 0
