"""Redis failover: how long submissions are refused, and how many acknowledged ones a failover loses.

A local primary, N replicas and three Sentinels (longcat.stack.redis_ha, short Sentinel timings), the job
store's submit as the gateway runs it, from ``--clients`` threads submitting back to back; SIGKILL the primary
(it stays down, a lost node), and read back every acknowledged job from the promoted replica.
Per setting: the time until submissions are acknowledged again, the refused (UNAVAILABLE) count, and the
acknowledged jobs missing after the failover.

    .venv/bin/python bench/redis_failover.py [--rounds 3] [--replicas 1 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import uuid

from longcat.api.keys import Keys
from longcat.errors import Unavailable
from longcat.jobs.connection import connect, redis_unavailable_as_error
from longcat.jobs.store import JobStore
from longcat.stack.redis_ha import LocalRedisHA


def one_round(replicas: int, durable: bool, clients: int, down_ms: int, window_s: float) -> dict:
    ha = LocalRedisHA(tempfile.mkdtemp(prefix="bench-ha-"), down_after_ms=down_ms,
                      failover_timeout_ms=max(3000, 3 * down_ms), replicas=replicas).start()
    try:
        acked: list[tuple[float, str]] = []
        refused = [0]
        stop = threading.Event()
        lock = threading.Lock()

        def submitter():
            store = JobStore(connect(ha.url), Keys("bench"), durable_replicas=1 if durable else 0,
                             durable_timeout_ms=500)
            while not stop.is_set():
                try:
                    with redis_unavailable_as_error():
                        job_id, _, _ = store.submit("edit", "bench", b"x" * 1024, request_id=uuid.uuid4().hex)
                    with lock:
                        acked.append((time.monotonic(), job_id))
                except Unavailable:
                    with lock:
                        refused[0] += 1
                    time.sleep(0.01)

        threads = [threading.Thread(target=submitter, daemon=True) for _ in range(clients)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        primary = ha.primary()
        killed_at = time.monotonic()
        primary.proc.kill()
        deadline = killed_at + window_s
        while time.monotonic() < deadline and not any(t > killed_at + 0.05 for t, _ in acked[-5:]):
            time.sleep(0.01)
        resumed = next((t - killed_at for t, _ in acked if t > killed_at + 0.05), None)
        returned = None
        if resumed is None and durable and replicas == 1:
            # No replica left to confirm: durable acks wait for the node's return (as a replica).
            primary.spawn()
            returned = time.monotonic() - killed_at
            while time.monotonic() < killed_at + window_s + 30 and \
                    not any(t > killed_at + 0.05 for t, _ in acked[-5:]):
                time.sleep(0.01)
            resumed = next((t - killed_at for t, _ in acked if t > killed_at + 0.05), None)
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(10)
        client = connect(ha.url)
        keys = Keys("bench")
        pipe = client.pipeline(transaction=False)
        for _, job_id in acked:
            pipe.exists(keys.job(job_id))
        present = pipe.execute()
        lost = sum(1 for p in present if not p)
        client.close()
        return {"replicas": replicas, "ack": "durable" if durable else "fast", "acknowledged": len(acked),
                "refused": refused[0], "lost": lost,
                "resumed_s": None if resumed is None else round(resumed, 2),
                "node_returned_s": None if returned is None else round(returned, 2)}
    finally:
        ha.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--down-after-ms", type=int, default=1000)
    p.add_argument("--window-s", type=float, default=20.0)
    args = p.parse_args()
    for replicas in args.replicas:
        for durable in (True, False):
            for _ in range(args.rounds):
                print(json.dumps(one_round(replicas, durable, args.clients, args.down_after_ms, args.window_s)),
                      flush=True)


if __name__ == "__main__":
    main()
