"""Shared by the commands that talk to a gateway: the client, and following a job with progress bars."""

from __future__ import annotations

import sys
from pathlib import Path

from longcat.v1 import edit_pb2


def add_gateway_args(p) -> None:
    p.add_argument("--gateway", default=None, help="HOST:PORT of the gateway (default $LONGCAT_GATEWAY or "
                                                   "127.0.0.1:50051)")
    p.add_argument("--api-key", default=None, help="API key (default $LONGCAT_API_KEY)")
    p.add_argument("--json", action="store_true", help="machine-readable output, no progress bars")


def client(args):
    from longcat.client import LongCatClient

    return LongCatClient(args.gateway, api_key=args.api_key)


def follow(lc, job_id: str, bars: bool = True, events_json: bool = False,
           save_dir: Path | None = None, results_dir: Path | None = None,
           saved: list | None = None) -> edit_pb2.Job:
    """Watch a job to its end with a progress bar (edits: steps; training: steps, loss, eta), or print each
    event as a JSON line; validation images are saved under ``save_dir``, a training run's result images
    (loss.png, validation/grid.png) under ``results_dir`` (their paths appended to ``saved``). Returns the
    final job."""
    import json

    from tqdm import tqdm

    from longcat.cli.output import as_dict

    bar = None
    final = None
    off = None if bars else True  # None: bars only on a terminal (piped output gets no \r-redrawn lines)
    try:
        for ev in lc.watch(job_id):
            if events_json:
                print(json.dumps(as_dict(ev)), flush=True)
            kind = ev.WhichOneof("payload")
            if kind == "progress":
                bar = bar or tqdm(total=ev.progress.total, desc="denoising", unit="step", disable=off)
                bar.update(ev.progress.step - bar.n)
            elif kind == "training":
                t = ev.training
                bar = bar or tqdm(total=t.total_steps, desc="training", unit="step", disable=off)
                bar.set_postfix(loss=f"{t.loss:.4f}", lr=f"{t.lr:.2e}", eta=f"{t.eta_s:.0f}s")
                bar.update(t.step - bar.n)
            elif kind == "validation" and save_dir is not None:
                out = save_dir / f"step-{ev.validation.step:06d}-{ev.validation.index}.png"
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(ev.validation.image_png)
                if bar is not None and bars:
                    bar.write(f"validation image: {out}")
            elif kind == "result_image" and results_dir is not None:
                out = _inside(results_dir, ev.result_image.name)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(ev.result_image.image_png)
                if saved is not None:
                    saved.append(out)
            elif kind == "queue_position" and bars and sys.stderr.isatty():  # progress, as the bars: stderr
                print(f"queued (position {ev.queue_position})", file=sys.stderr, flush=True)
            elif kind == "job":
                final = ev.job
    finally:
        if bar is not None:
            bar.close()
    return final or lc.get_job(job_id)



def _inside(root: Path, name: str) -> Path:
    """``root/name`` for a name the server sent; never outside ``root``."""
    parts = [p for p in Path(name).parts if p not in ("", ".", "..", "/")]
    return root.joinpath(*parts) if parts else root / "result.png"
