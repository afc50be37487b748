"""The step scheduler against one-request-at-a-time serving, through the whole stack (CPU, tiny model).

    python bench/step_scheduler.py [--size 256] [--steps 20] [--inflight 0] [--repeats 3]

Starts a private redis-server, the encoder, one denoiser worker and a gateway as processes, then runs each
scenario twice, side by side: a worker with ``--max-inflight 1`` (one request at a time, first in first out:
today's serving) and a worker with the step scheduler (its device's bounds, or ``--max-inflight --inflight``).
Times are the job records' own (``finished_at - created_at``), so client polling does not count.

* throughput: 8 concurrent --size² edits (CFG 4.5, seeds differ), adapters mixed (four LoRAs, scales differ,
  two with none): wall time from the first submit to the last result, the best of --repeats after one
  warm-up round (the adapters loaded: steady serving); ratio one-at-a-time / batched.
* priority: 20 NORMAL edits queued, then one more edit; its latency against the same edit alone. Baseline:
  the last edit is NORMAL on the one-at-a-time worker (FIFO); scheduler: it is HIGH. (The 20 are then
  cancelled: they were only there to compete.)
* tenants: tenant A keeps 20 edits outstanding (submits a new one as soon as one ends) while tenant B sends
  5 edits one after another; B's median latency against B's edit alone. A's leftovers are then cancelled.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the services run: several processes share the cores

from longcat.v1 import common_pb2, edit_pb2  # noqa: E402
from tests.gateway_stack import Stack, request, submit, wait_for, wait_job  # noqa: E402
from tests.redis_proc import RedisProcess  # noqa: E402

ADAPTERS = ["ink", "sun", "fog", "oak"]
KEYS = {"key-a": "tenant-a", "key-b": "tenant-b"}


def write_adapters(folder: Path) -> None:
    import peft
    import torch

    from longcat.adapters import save_lora
    from longcat.models.loading import load_components

    base = load_components("tiny", components=("transformer",)).transformer
    for i, name in enumerate(ADAPTERS):
        m = copy.deepcopy(base)
        m.add_adapter(peft.LoraConfig(r=4, lora_alpha=4.0, target_modules=["to_q", "to_k", "to_v"]), "t")
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for n, p in m.named_parameters():
                if "lora_" in n:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        save_lora(m, "t", folder / name, rank=4, alpha=4.0)


def latency(view: edit_pb2.Job) -> float:
    return view.finished_at - view.created_at


def run_all(stub, reqs, key=None) -> list[edit_pb2.Job]:
    md = [("authorization", f"Bearer {key}")] if key else None
    jobs = [submit(stub, r, metadata=md) for r in reqs]
    return [wait_job(stub, j.id, (edit_pb2.SUCCEEDED,), 1800, metadata=md) for j in jobs]


def drain(stub, jobs, md) -> None:
    """Cancel what is still queued or running (it was only there to compete), wait for every job to end."""
    for j in jobs:
        stub.CancelJob(edit_pb2.CancelJobRequest(job_id=j.id), metadata=md, timeout=30)
    for j in jobs:
        wait_job(stub, j.id, (edit_pb2.SUCCEEDED, edit_pb2.CANCELLED), 1800, metadata=md)


def scenarios(s: Stack, args) -> dict:
    stub = s.edit()
    size, steps = args.size, args.steps

    def req(seed, **kw):
        kw.setdefault("guidance_scale", 4.5)
        return request(size, steps, seed=seed, prompt="make the sky purple", **kw)

    out = {}
    # throughput
    mixed = []
    for i in range(8):
        adapters = [] if i in (3, 7) else [common_pb2.AdapterRef(name=ADAPTERS[i % 4], scale=0.5 + 0.25 * (i % 3))]
        mixed.append(req(100 + i, adapters=[(a.name, a.scale) for a in adapters]))
    run_all(stub, mixed, "key-a")  # warm-up: the adapters loaded, as in steady serving
    walls = []
    for _ in range(args.repeats):
        t0 = time.time()
        done = run_all(stub, mixed, "key-a")
        walls.append(max(j.finished_at for j in done) - t0)
    out["throughput_wall_s"], out["throughput_walls_s"] = min(walls), walls
    # priority
    md = [("authorization", "Bearer key-a")]
    solo = latency(run_all(stub, [req(200, priority=edit_pb2.PRIORITY_HIGH)], "key-a")[0])
    queued = [submit(stub, req(300 + i), metadata=md) for i in range(20)]
    last = submit(stub, req(200, priority=args.last_priority), metadata=md)
    view = wait_job(stub, last.id, (edit_pb2.SUCCEEDED,), 1800, metadata=md)
    out["priority_solo_s"], out["priority_latency_s"] = solo, latency(view)
    drain(stub, queued, md)
    # tenants: A keeps 20 edits outstanding (a new one as soon as one ends), B edits one at a time
    md_b = [("authorization", "Bearer key-b")]
    solo_b = latency(run_all(stub, [req(400)], "key-b")[0])
    stop, flood = threading.Event(), []

    def flooding():
        outstanding, i = [], 0
        while not stop.is_set():
            outstanding = [j for j in outstanding if s.job_field(j, "state") in ("QUEUED", "RUNNING")]
            while len(outstanding) < 20:
                job = submit(stub, req(500 + i), metadata=md)
                flood.append(job)
                outstanding.append(job.id)
                i += 1
            stop.wait(0.05)

    t = threading.Thread(target=flooding, daemon=True)
    t.start()
    wait_for(lambda: len(flood) >= 20, 60, "the flood")
    b = [latency(wait_job(stub, submit(stub, req(600 + i), metadata=md_b).id, (edit_pb2.SUCCEEDED,), 1800,
                          metadata=md_b)) for i in range(5)]
    stop.set()
    t.join()
    drain(stub, flood, md)
    out["tenant_solo_s"], out["tenant_median_s"], out["tenant_flood_jobs"] = solo_b, statistics.median(b), len(flood)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--inflight", type=int, default=0, help="the scheduler's --max-inflight (0: its device's)")
    ap.add_argument("--repeats", type=int, default=3, help="throughput rounds per side (the best counts)")
    args = ap.parse_args()
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop the stack's processes on the way out
    from longcat.models.loading import resolve_model

    model = resolve_model("tiny")
    root = Path(tempfile.mkdtemp(prefix="bench-sched-"))
    redis_proc = RedisProcess(root).start()
    results = {}
    try:
        # Today's serving: one job at a time, read from the stream one by one (FIFO); the last edit is NORMAL.
        for label, inflight, lookahead, last in [
                ("one_at_a_time", 1, 1, edit_pb2.PRIORITY_NORMAL),
                ("step_scheduler", args.inflight, 32, edit_pb2.PRIORITY_HIGH)]:
            s = Stack(model, root / label, redis_proc, ns=label,
                      worker_args=("--max-inflight", str(inflight), "--lookahead", str(lookahead)))  # 0: default
            try:
                write_adapters(s.adapter_dir)
                s.add_worker()
                s.add_gateway("main", env={"LONGCAT_API_KEYS": ",".join(f"{o}:{k}" for k, o in KEYS.items())})
                s.wait_serving()
                args.last_priority = last
                results[label] = scenarios(s, args)
                print(label, json.dumps(results[label]), flush=True)
            finally:
                s.close()
    finally:
        redis_proc.stop()
    one, sched = results["one_at_a_time"], results["step_scheduler"]
    ratios = {
        "throughput_speedup": one["throughput_wall_s"] / sched["throughput_wall_s"],
        "priority_ratio_fifo": one["priority_latency_s"] / one["priority_solo_s"],
        "priority_ratio_scheduler": sched["priority_latency_s"] / sched["priority_solo_s"],
        "tenant_ratio_fifo": one["tenant_median_s"] / one["tenant_solo_s"],
        "tenant_ratio_scheduler": sched["tenant_median_s"] / sched["tenant_solo_s"],
    }
    print(json.dumps(ratios, indent=1))
    print_goals(ratios)


def print_goals(r: dict) -> None:
    """Issue 13's three goals, each with its measured ratio and the FIFO baseline beside it."""
    goals = [
        ("throughput, 8 concurrent edits, mixed adapters: batched vs one at a time", r["throughput_speedup"],
         ">= 1.5x", r["throughput_speedup"] >= 1.5, "wall time one at a time / batched"),
        ("a HIGH edit behind 20 queued NORMAL: latency / solo", r["priority_ratio_scheduler"], "<= 1.5x",
         r["priority_ratio_scheduler"] <= 1.5, f"FIFO {r['priority_ratio_fifo']:.2f}x"),
        ("tenant B while tenant A floods: B's median / solo", r["tenant_ratio_scheduler"], "<= 2x",
         r["tenant_ratio_scheduler"] <= 2.0, f"FIFO {r['tenant_ratio_fifo']:.2f}x"),
    ]
    for what, value, goal, met, note in goals:
        print(f"GOAL {what}: {value:.2f}x (goal {goal}: {'met' if met else 'NOT met'}; {note})")

if __name__ == "__main__":
    main()
