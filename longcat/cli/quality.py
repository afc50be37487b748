"""``longcat quality``: measure each speed preset's drift from ``exact`` and record it for the denoiser's gate."""

from __future__ import annotations

import json
import math


def register(sub) -> None:
    p = sub.add_parser("quality", help="measure speed presets' drift (PSNR/SSIM vs exact) and record it")
    p.add_argument("--model", default=None, help="diffusers folder, hub id or 'tiny' (default $LONGCAT_MODEL or tiny)")
    p.add_argument("--presets", default="fast,taylor", help="comma-separated presets to measure")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME", help="measure with this adapter on")
    p.add_argument("--adapter-dir", default=None, help="folder of adapters (NAME/pytorch_lora_weights.safetensors)")
    p.add_argument("--probes", type=int, default=2, help="probe images (fixed, seeded)")
    p.add_argument("--steps", type=int, default=20, help="denoising steps per probe")
    p.add_argument("--size", type=int, default=256, help="output side in pixels")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto")
    p.add_argument("--precision", default="fp32", help="fp32, bf16, ...")
    p.add_argument("--record", required=True, help="JSON file to write (merged with what it already holds); "
                                                   "give it to the denoiser as --quality-record")
    p.add_argument("--min-psnr-db", type=float, default=30.0, help="the bound to report pass/fail against")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from longcat.engine import EditEngine
    from longcat.engine.quality_gate import QualityRecord, adapter_key, measure_presets, model_fingerprint

    device = None if args.device == "auto" else args.device
    engine = EditEngine.load(args.model, device=device, precision=args.precision, adapter_root=args.adapter_dir)
    fingerprint = model_fingerprint(engine.components.transformer)
    figures = measure_presets(engine, [p for p in args.presets.split(",") if p], args.adapter, args.probes,
                              args.steps, args.size)
    path = Path(args.record)
    record = QualityRecord.load(path) if path.exists() else QualityRecord(fingerprint)
    if record.model != fingerprint:  # another model's record: start over
        record = QualityRecord(fingerprint)
    record.entries.setdefault(adapter_key(args.adapter), {}).update(figures)
    record.save(path)
    for fig in figures.values():
        fig["passes"] = fig["psnr_db"] >= args.min_psnr_db
    if args.json:
        print(json.dumps({"ok": True, "record": str(path), "model": fingerprint, "presets": figures}))
    else:
        for name, fig in figures.items():
            db = "inf" if math.isinf(fig["psnr_db"]) else f"{fig['psnr_db']:.1f}"
            print(f"{name:8s} PSNR {db} dB  SSIM {fig['ssim']:.4f}  LPIPS n/a  speedup {fig['speedup']:.2f}x  "
                  f"{'ok' if fig['passes'] else 'REFUSED'} (bound {args.min_psnr_db} dB)")
        print(f"recorded in {path}")
    return 0
