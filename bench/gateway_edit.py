"""The public gateway end to end: ``Edit`` latency vs the in-process engine, and throughput vs workers.

    python bench/gateway_edit.py [--model tiny] [--size 256] [--steps 4] [--repeats 5]
                                 [--tp-size 128] [--tp-steps 4] [--clients 8] [--jobs 64] [--workers 1,2,4]

Starts a private redis-server, the encoder, denoiser workers and a gateway as processes (as in production,
each its own process), then:

* latency: the same seeded edit (--size, --steps, CFG 4.5) through gateway ``Edit`` (validate, queue in Redis,
  a worker claims it, encoder over gRPC, denoise, PNG, result back through Redis) and through the in-process
  engine plus PNG encoding, interleaved; median wall times and their ratio. Each repeat uses a new prompt, so
  the encoder's cache never answers (a fresh request pays for a real encode on both sides).
* throughput: --clients threads, each with its own connection, calling ``Edit`` (--tp-size, --tp-steps) until
  --jobs edits are done, with 1, 2 and 4 workers; edits/s over the whole batch after a warm-up batch.

On a small CPU machine the workers share the same cores: more workers cannot scale there (the numbers show
the queue's overhead, not a speed-up). On a GPU fleet each worker has its own device.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the services run: several processes share the cores

from longcat.engine import EditEngine, EditRequest  # noqa: E402
from longcat.images import encode_png  # noqa: E402
from longcat.launch import ROOT, ServiceProcess  # noqa: E402
from longcat.models.loading import resolve_model  # noqa: E402
from longcat.rpc.channel import make_channel  # noqa: E402
from longcat.v1 import edit_pb2, edit_pb2_grpc  # noqa: E402


def start_redis(folder: Path):
    sys.path.insert(0, str(ROOT))
    from tests.redis_proc import RedisProcess

    return RedisProcess(folder).start()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tp-size", type=int, default=128, help="throughput edits: width = height")
    ap.add_argument("--tp-steps", type=int, default=4, help="throughput edits: steps (CFG 4.5)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients for throughput")
    ap.add_argument("--jobs", type=int, default=64, help="edits per throughput measurement")
    ap.add_argument("--workers", default="1,2,4", help="worker counts to measure throughput with")
    args = ap.parse_args()
    model = resolve_model(args.model)
    image = (ROOT / "examples" / "sample.png").read_bytes()
    size, steps = args.size, args.steps
    worker_counts = sorted(int(n) for n in args.workers.split(","))

    logs = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    redis_proc = start_redis(logs)
    stack = ["--redis-url", redis_proc.url, "--namespace", "bench", "--adapter-dir", str(logs / "adapters")]
    enc = ServiceProcess("encoder", ["--model", model, "--metrics-port", "0"], logs)
    workers: list[ServiceProcess] = []

    def add_worker() -> ServiceProcess:
        w = ServiceProcess("denoiser", ["--model", model, *stack, "--encoder", enc.address,
                                        "--metrics-port", "0"], logs)
        workers.append(w)
        return w

    add_worker()
    gw = ServiceProcess("gateway", [*stack, "--threads", str(args.clients + 8), "--metrics-port", "0"], logs,
                        env={"LONGCAT_API_KEYS": ""})
    engine = None
    try:
        for svc in (enc, *workers, gw):
            svc.wait_serving(300)
        channel = make_channel(gw.address)
        stub = edit_pb2_grpc.EditServiceStub(channel)
        engine = EditEngine.load(model, device="cpu")

        def gateway_edit(i, s=size, n=steps, client=stub):
            return client.Edit(edit_pb2.EditRequest(
                image=image, prompt=f"make the sky purple #{i}", width=s, height=s, num_inference_steps=n,
                guidance_scale=4.5, seed=42), timeout=600).image

        def local(i):  # PNG bytes out, as the gateway returns
            return encode_png(engine.edit(EditRequest(image=image, prompt=f"make the sky purple #{i}", width=size,
                                                      height=size, num_inference_steps=steps, guidance_scale=4.5,
                                                      seed=42)).image)

        # --- latency: one request at a time, one worker -------------------------------------------------------
        remote_png, local_png = gateway_edit(-1), local(-1)  # warm both paths
        t_remote, t_local = [], []
        for i in range(args.repeats):  # interleaved so machine noise hits both alike
            t0 = time.perf_counter(); gateway_edit(i); t_remote.append(time.perf_counter() - t0)  # noqa: E702
            t0 = time.perf_counter(); local(i); t_local.append(time.perf_counter() - t0)  # noqa: E702
        same = remote_png == local_png

        # --- throughput: --clients at once, 1, 2, 4 workers ----------------------------------------------------
        def batch(n_jobs: int, tag: str) -> float:
            counter = iter(range(n_jobs))
            lock = threading.Lock()
            errors: list = []

            def client():
                ch = make_channel(gw.address)
                s = edit_pb2_grpc.EditServiceStub(ch)
                try:
                    while True:
                        with lock:
                            i = next(counter, None)
                        if i is None:
                            return
                        gateway_edit(f"{tag}-{i}", args.tp_size, args.tp_steps, s)
                except Exception as exc:  # noqa: BLE001
                    errors.append(exc)
                finally:
                    ch.close()

            threads = [threading.Thread(target=client) for _ in range(args.clients)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - t0
            if errors:
                raise RuntimeError(f"{len(errors)} edits failed, e.g. {errors[0]!r}")
            return n_jobs / elapsed

        throughput = []
        for n in worker_counts:
            new = [add_worker() for _ in range(n - len(workers))]
            for w in new:
                w.wait_serving(300)
            batch(args.clients * 2, f"warm{n}")  # every worker's first edits at this size, not timed
            throughput.append((n, batch(args.jobs, f"w{n}")))
        channel.close()
    finally:
        for svc in (gw, *workers, enc):
            svc.stop()
        redis_proc.stop()

    r, l_ = statistics.median(t_remote), statistics.median(t_local)
    print(f"model {args.model}, {os.cpu_count()} CPU cores, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}")
    print(f"\nlatency: {size}x{size}, {steps} steps, CFG 4.5, seed 42, {args.repeats} repeats (median)")
    print(f"  in-process engine+PNG      : {l_ * 1000:8.1f} ms")
    print(f"  gateway Edit (Redis+gRPC)  : {r * 1000:8.1f} ms")
    print(f"  ratio gateway/in-process   : {r / l_:8.3f}   (same PNG bytes: {same})")
    print(f"\nthroughput: {args.tp_size}x{args.tp_size}, {args.tp_steps} steps, CFG 4.5, {args.clients} concurrent "
          f"clients, {args.jobs} edits per row")
    print("  workers | edits/s | vs 1 worker")
    for n, eps in throughput:
        print(f"  {n:7d} | {eps:7.2f} | {eps / throughput[0][1]:6.2f}x")
    if (os.cpu_count() or 1) < 2 * max(worker_counts):
        print(f"\n  note: {os.cpu_count()} cores are shared by every worker process: more workers cannot add "
              "compute here.")


if __name__ == "__main__":
    main()
