"""``longcat cache clear --config CONFIG.json [--dataloader DATALOADER.json]``: empty both VAE caches (edit and
reference datasets) and the text-embedding cache of a training setup, and say what was removed."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("cache", help="clear a training setup's VAE and text caches")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    clear = verbs.add_parser("clear", help="empty the VAE caches of every dataset and the text cache "
                                           "(the next training run rebuilds them)")
    clear.add_argument("--config", required=True, help="training config.json (its output_dir holds default caches)")
    clear.add_argument("--dataloader", default=None,
                       help="dataloader JSON naming cache_dir_vae per dataset (default: the config's "
                            "data_backend_config)")
    clear.add_argument("--json", action="store_true", help="print what was removed as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from longcat.cli.validate import load_training_files
    from longcat.training.cache_clear import cache_folders, clear_cache

    config, dataloader = load_training_files(args.config, args.dataloader)
    cleared = [clear_cache(name, folder) for name, folder in cache_folders(config, dataloader)]
    if args.json:
        print(json.dumps({"ok": True, "cleared": [{"cache": c.name, "path": str(c.path), "files": c.files,
                                                   "bytes": c.bytes} for c in cleared]}))
        return 0
    for c in cleared:
        print(f"{c.name:24s} {c.path}: removed {c.files} file{'s' * (c.files != 1)} ({c.bytes / 1e6:.1f} MB)")
    total = sum(c.files for c in cleared)
    print(f"cleared {len(cleared)} caches, {total} files; the next training run rebuilds them")
    return 0
