"""Batched steps vs one request at a time, in one process (no Redis, no gRPC: the denoise stage only).

    python bench/step_scheduler_engine.py [--jobs 8] [--size 256] [--steps 20] [--repeats 3]

The same --jobs edits (CFG 4.5, seeds differ, adapters mixed: four LoRAs at different scales, a quarter with
none), on the tiny model: one at a time through the one denoise stage (adapters switched per request, as a
worker did before the step scheduler), and all at once through the step scheduler (one forward per step, each
row its own adapters). Alternating repeats; the best of each; the ratio. Decoding is left out of both.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the services run (services/__init__.py)

import torch  # noqa: E402

from bench.step_scheduler import ADAPTERS, write_adapters  # noqa: E402
from longcat.adapters import AdapterManager, AdapterStore  # noqa: E402
from longcat.api.sizes import Geometry  # noqa: E402
from longcat.engine.denoise import DenoiseJob, DenoiseLoop  # noqa: E402
from longcat.engine.stage import StageRequest, run_denoise_stage  # noqa: E402
from longcat.engine.step_scheduler import SchedulerBounds, StepJob, StepScheduler  # noqa: E402
from longcat.models.loading import load_components, resolve_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    c = load_components(resolve_model("tiny"), device="cpu", precision="fp32")
    root = Path(tempfile.mkdtemp(prefix="bench-sched-engine-"))
    write_adapters(root)
    loop = DenoiseLoop(c.transformer, c.vae, c.scheduler)
    manager = AdapterManager(c.transformer, AdapterStore(root), capacity=8)
    g = Geometry(args.size, args.size)
    dim = c.transformer.config.joint_attention_dim
    gen = torch.Generator().manual_seed(0)
    jobs = []
    for i in range(args.jobs):
        refs = [] if i % 4 == 3 else [(ADAPTERS[i % 4], 0.5 + 0.25 * (i % 3))]
        jobs.append((DenoiseJob(torch.randn(1, 100, dim, generator=gen), torch.randn(1, 100, dim, generator=gen),
                                torch.randn(1, g.image_seq_len, 64, generator=gen), g, args.steps, 4.5, i), refs))

    def one_at_a_time():
        for job, refs in jobs:
            run_denoise_stage(loop, manager, StageRequest(job.prompt_embeds, job.negative_embeds, g, job.steps,
                                                          4.5, job.seed, reference_latents=job.reference_latents,
                                                          adapters=refs), decode=False)

    def batched():
        sched = StepScheduler(loop, manager, SchedulerBounds(max_inflight=args.jobs, max_batch_tokens=1 << 30))
        for job, refs in jobs:
            sched.admit(StepJob(job, adapters=refs))
        sched.run_all()

    best = {"one_at_a_time": float("inf"), "batched": float("inf")}
    batched()  # warm-up (loads the adapters)
    for _ in range(args.repeats):
        for name, run in (("one_at_a_time", one_at_a_time), ("batched", batched)):
            t0 = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - t0)
    speedup = best["one_at_a_time"] / best["batched"]
    print({k: round(v, 3) for k, v in best.items()})
    print(f"GOAL throughput, {args.jobs} edits, mixed adapters: batched vs one at a time: {speedup:.2f}x "
          f"(goal >= 1.5x: {'met' if speedup >= 1.5 else 'NOT met'})")


if __name__ == "__main__":
    main()
