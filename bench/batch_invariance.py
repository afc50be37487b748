"""What the batch-invariant linears (longcat/engine/batch_invariance.py) cost, in one process (tiny model, CPU).

    python bench/batch_invariance.py [--size 256] [--steps 2] [--jobs 8] [--repeats 15]

The same work with ``DenoiseLoop.batch_invariant`` on and off, alternating, best of --repeats each: one CFG
edit alone through the denoise stage, and --jobs CFG edits batched through the step scheduler (one forward
per step). Prints the overhead of each (goal: a few per cent at most). Decoding is left out. Many short
repeats and the fastest of each: on a loaded machine only the fastest runs say what the code costs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from longcat.api.sizes import Geometry  # noqa: E402
from longcat.engine.denoise import DenoiseJob, DenoiseLoop  # noqa: E402
from longcat.engine.step_scheduler import SchedulerBounds, StepJob, StepScheduler  # noqa: E402
from longcat.models.loading import load_components, resolve_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    c = load_components(resolve_model("tiny"), device="cpu", precision="fp32")
    loop = DenoiseLoop(c.transformer, c.vae, c.scheduler)
    g = Geometry(args.size, args.size)
    dim = c.transformer.config.joint_attention_dim
    gen = torch.Generator().manual_seed(0)
    jobs = [DenoiseJob(torch.randn(1, 100, dim, generator=gen), torch.randn(1, 100, dim, generator=gen),
                       torch.randn(1, g.image_seq_len, 64, generator=gen), g, args.steps, 4.5, i)
            for i in range(args.jobs)]

    def alone():
        return loop.run(jobs[0])

    def batched():
        sched = StepScheduler(loop, None, SchedulerBounds(max_inflight=args.jobs, max_batch_tokens=1 << 30))
        for job in jobs:
            sched.admit(StepJob(job))
        assert all(sj.error is None for sj in sched.run_all())

    best: dict[tuple[str, bool], float] = {}
    for name, run in (("alone", alone), ("batched", batched)):
        run()  # warm-up
        for _ in range(args.repeats):
            for on in (False, True):
                loop.batch_invariant = on
                t0 = time.perf_counter()
                run()
                dt = time.perf_counter() - t0
                best[name, on] = min(best.get((name, on), float("inf")), dt)
    for name in ("alone", "batched"):
        off, on = best[name, False], best[name, True]
        print(f"GOAL batch-invariant linears, {name} ({1 if name == 'alone' else args.jobs} CFG edit(s), "
              f"{args.size}², {args.steps} steps): off {off:.3f} s, on {on:.3f} s, overhead "
              f"{100 * (on / off - 1):+.1f}% (goal: a few per cent at most)")


if __name__ == "__main__":
    main()
