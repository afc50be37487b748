"""Chaos on a real local stack, with the figures RELIABILITY.md quotes.

    python bench/chaos.py [--minutes 5] [--seed 0] [--gap 6,12] [--edit-deadline-s 30] [--trainers 1] [--train-steps 200] [--model tiny]

Starts Redis (AOF, appendfsync everysec, as shipped), the encoder, two denoiser workers, a trainer and a gateway
(tests/chaos_stack.py), streams edits (each acknowledged one retried with its request_id until the gateway
takes it) and runs one training job, while SIGKILLing a random denoiser, the trainer or Redis every --gap
seconds and starting it again at once (Redis after a 1-2 s outage). Then waits for every job to end and prints:
jobs accepted / completed once / lost / duplicated, the faults injected, the recovery times (p50 / max: a
killed worker's or trainer's jobs claimed again, Redis serving submissions again), training steps re-run per
fault against the checkpoint interval, and the gateway's memory early vs late. Loopback only; stops by itself.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the services run: several processes share the cores

from longcat.models.loading import resolve_model  # noqa: E402
from tests.chaos_stack import Chaos, dumps  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gap", default="6,12", help="seconds between faults: min,max")
    ap.add_argument("--train-steps", type=int, default=200)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--trainers", type=int, default=1, help="2: a killed trainer's job can continue on the other")
    ap.add_argument("--edit-deadline-s", type=float, default=30.0,
                    help="each edit's submit deadline: some expire while workers are down (honesty is checked)")
    args = ap.parse_args()
    gap = tuple(float(x) for x in args.gap.split(","))
    with tempfile.TemporaryDirectory(prefix="longcat-chaos-") as tmp:
        t0 = time.monotonic()
        chaos = Chaos(Path(tmp), resolve_model(args.model), seed=args.seed, train_steps=args.train_steps,
                      edit_deadline_s=args.edit_deadline_s, trainers=args.trainers)
        try:
            print(f"stack up in {time.monotonic() - t0:.0f}s; {args.minutes} min of faults", flush=True)
            chaos.run(args.minutes * 60, gap_s=gap)
            chaos.wait_settled(900)
            v = chaos.verdict()
        finally:
            chaos.close()
    once = v["states"].get("SUCCEEDED", 0) - len(v["terminal_twice"])
    print(dumps(v))
    trains = v["training"]
    print(f"\nCHAOS {args.minutes} min, seed {args.seed}: accepted {v['accepted']}, completed once {once}, "
          f"failed {v['states'].get('FAILED', 0)} {v['failed_reasons']} (dishonest 'not run': "
          f"{len(v['dishonest_not_run'])}), lost {len(v['lost'])}, duplicated "
          f"{len(v['duplicated_request_ids']) + len(v['terminal_twice'])}, not finished {len(v['not_terminal'])}; "
          f"faults {v['faults']} (unrecovered {len(v['faults_unrecovered'])}); recovery {v['recovery_s']}; "
          f"training jobs {[t['state'] for t in trains]}, attempts {[t['attempts'] for t in trains]}, steps re-run "
          f"per fault {[t['reruns'] for t in trains]} (checkpoint every {v['checkpoint_steps']}); gateway RSS "
          f"{v['gateway_rss_mb']}")

if __name__ == "__main__":
    main()
