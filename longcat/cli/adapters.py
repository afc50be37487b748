"""``longcat adapters {list,show,delete,download,upload,visibility}``: the adapter registry behind the gateway.

NAME may be ``name``, ``name@vN``, ``owner/name`` or ``owner/name@vN`` (another tenant's, shared with you)."""

from __future__ import annotations

import json
import time

from longcat.cli.output import as_dict, emit_list
from longcat.cli.remote import add_gateway_args, client


def _line(a) -> str:
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(a.created_at)) if a.created_at else "-"
    name = f"{a.owner}/{a.name}@v{a.version}" if a.version else a.name
    return f"{name:32s} {a.visibility or '-':8s} rank {a.rank:<4d} alpha {a.alpha:<6g} {a.format:9s} {a.size_bytes / 1e6:8.2f} MB  {when}"


def register(sub) -> None:
    p = sub.add_parser("adapters", help="list, show, delete, download or upload LoRA adapters")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    verbs.add_parser("list", help="every adapter you may see (yours and those shared with you), by name")
    for name in ("show", "delete"):
        verbs.add_parser(name, help=f"{name} one adapter (name@vN: that version)").add_argument(
            "name", help="the adapter: name, name@vN, owner/name or owner/name@vN")
    vis = verbs.add_parser("visibility", help="set who may see your adapter")
    vis.add_argument("name", help="the adapter's name")
    vis.add_argument("visibility", choices=("private", "shared", "public"),
                     help="private: you only; shared: every tenant may use it; public: and download it")
    d = verbs.add_parser("download", help="save an adapter as DIR/pytorch_lora_weights.safetensors (diffusers)")
    d.add_argument("name", help="the adapter's name")
    d.add_argument("--out", default=".", metavar="DIR", help="folder to write into (default: here)")
    u = verbs.add_parser("upload", help="bring a LoRA in (diffusers or PEFT safetensors; a file or a folder)")
    u.add_argument("name", help="the name to store it under")
    u.add_argument("path", help="a .safetensors file, or a folder with pytorch_lora_weights.safetensors or "
                                "adapter_model.safetensors (+ adapter_config.json)")
    u.add_argument("--overwrite", action="store_true", help="publish a new version of your adapter of this name")
    for v in verbs.choices.values():
        add_gateway_args(v)
    p.set_defaults(func=run)


def run(args) -> int:
    with client(args) as lc:
        if args.verb == "list":
            emit_list(lc.list_adapters(), args, _line, "no adapters")
            return 0
        if args.verb == "download":
            a, path = lc.download_adapter(args.name, args.out)
            print(json.dumps({**as_dict(a), "path": str(path)}) if args.json else f"saved {a.name} to {path}")
            return 0
        if args.verb == "upload":
            a = lc.upload_adapter(args.name, args.path, overwrite=args.overwrite)
            print(json.dumps(as_dict(a)) if args.json else "uploaded " + _line(a))
            return 0
        if args.verb == "visibility":
            a = lc.set_adapter_visibility(args.name, args.visibility)
            print(json.dumps(as_dict(a)) if args.json else _line(a))
            return 0
        a = lc.get_adapter(args.name) if args.verb == "show" else lc.delete_adapter(args.name)
        print(json.dumps(as_dict(a)) if args.json else ("deleted " if args.verb == "delete" else "") + _line(a))
    return 0
