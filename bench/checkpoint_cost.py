"""What a training checkpoint costs, against the steps it protects: the same seeded run without checkpoints
and with one after every step, interleaved, plus the size of one checkpoint.

    python bench/checkpoint_cost.py [--steps 20] [--repeats 3] [--size 64] [--rank 16] [--model tiny]

A checkpoint is the LoRA weights, the optimizer, LR scheduler and RNG states (longcat/training/checkpoint.py),
written to a temporary folder, fsynced and renamed into place. Prints the median wall time of each run, the
cost of one checkpoint (difference / steps) in ms and as a fraction of a training step, and its bytes: what
``checkpointing_steps`` or ``--checkpoint-every-s`` can afford.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from longcat.models.loading import load_components, resolve_model  # noqa: E402
from longcat.training import Trainer  # noqa: E402
from longcat.training.sample_data import quickstart_dataloader, write_pairs  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--model", default="tiny")
    args = ap.parse_args()
    components = load_components(resolve_model(args.model), device="cpu", precision="fp32")
    with tempfile.TemporaryDirectory(prefix="longcat-ckpt-") as tmp:
        root = Path(tmp)
        edits, refs = write_pairs(root / "data", count=8, size=(args.size, args.size), seed=1)
        loader = quickstart_dataloader(edits, refs, root / "cache", resolution=args.size)

        def run(tag: str, every: int | None) -> float:
            out = root / f"{tag}-{time.monotonic_ns()}"
            config = {"learning_rate": 1e-3, "lr_warmup_steps": 0, "max_train_steps": args.steps, "seed": 3,
                      "train_batch_size": 1, "lora_rank": args.rank, "output_dir": str(out),
                      "checkpointing_steps": every, "checkpoints_total_limit": 1, "validation_steps": None,
                      "num_validation_images": 0}
            t0 = time.perf_counter()
            Trainer(config, loader, components=components).run()
            return time.perf_counter() - t0

        run("warm", None)  # caches filled, code paths warm
        plain, every = [], []
        for _ in range(args.repeats):
            plain.append(run("plain", None))
            every.append(run("every", 1))
        ckpt = next((root).glob("every-*/checkpoints/checkpoint-*"))
        size = sum(p.stat().st_size for p in ckpt.iterdir())
    p, e = statistics.median(plain), statistics.median(every)
    step_ms, cost_ms = p / args.steps * 1000, (e - p) / args.steps * 1000
    print(f"{args.steps} steps, {args.size}px, rank {args.rank}, {args.repeats} repeats: no checkpoints {p:.2f}s, "
          f"a checkpoint after every step {e:.2f}s (ratio {e / p:.2f}); one step {step_ms:.0f} ms, one checkpoint "
          f"{cost_ms:.0f} ms ({cost_ms / step_ms:.2f} steps), {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
