"""Does the gateway keep answering short calls while many calls wait? For one or more source trees side by side
(e.g. main vs a branch): opens N ``WatchJob`` streams (one per queued job) and M blocking ``Edit`` calls
against a real gateway and a private redis-server (no denoiser: every job stays queued, so every one of them
waits for the whole run), then probes health ``Check`` and ``GetJob`` and ``SubmitEdit`` latency during the
load.

    .venv/bin/python bench/gateway_load.py [--watchers 1000 --edits 100 --probe-s 30] [--tree NAME=PATH ...]

Each tree runs ``python -m services.gateway`` from PATH (its own ``longcat/v1`` stubs: ``python -m
longcat.protos_build`` there). Prints, per tree, p50/p99 (a timed-out probe counts as its deadline) and
timeouts of each probe, how many streams got their first event, and the first tree's p50/p99 over this one's; ``--json`` prints one JSON line per tree instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from longcat.launch import free_port  # noqa: E402
from longcat.rpc.channel import make_channel, wait_until_serving  # noqa: E402
from longcat.v1 import edit_pb2, edit_pb2_grpc  # noqa: E402
from tests.gateway_stack import request  # noqa: E402
from tests.redis_proc import RedisProcess  # noqa: E402


def start_gateway(tree: Path, redis_url: str, namespace: str, max_queue: int, log_path: Path, http: bool):
    port, http_port = free_port(), free_port() if http else 0
    env = {**os.environ, "PYTHONPATH": str(tree), "LONGCAT_API_KEYS": ""}
    cmd = [sys.executable, "-c", "import sys, runpy; sys.argv[0] = 'gateway'; "
           "runpy.run_module('services.gateway', run_name='__main__')",
           "--port", str(port), "--metrics-port", "0", "--http-port", str(http_port), "--redis-url", redis_url,
           "--namespace", namespace, "--max-queue", str(max_queue), "--log-level", "WARNING"]
    log = log_path.open("wb")
    proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT)
    wait_until_serving(make_channel(f"127.0.0.1:{port}"), timeout=120)
    return proc, f"127.0.0.1:{port}", f"http://127.0.0.1:{http_port}" if http else ""


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class Probe:
    """Short calls on their own channel and thread, every ``every_s``, each with a ``deadline_s``."""

    def __init__(self, target: str, job_id: str, deadline_s: float, every_s: float, http_url: str = ""):
        self.channel = grpc.insecure_channel(target)
        self.http_url = http_url
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.edit = edit_pb2_grpc.EditServiceStub(self.channel)
        self.job_id, self.deadline_s, self.every_s = job_id, deadline_s, every_s
        self.samples: dict[str, list[float]] = {"health": [], "get_job": [], "submit_edit": []}
        if http_url:
            self.samples.update({"http_readyz": [], "http_get_job": []})
        self.timeouts = {k: 0 for k in self.samples}
        self.errors = {k: 0 for k in self.samples}
        self.stop = threading.Event()
        self.submitted: list[str] = []

    def _one(self, name: str, call) -> None:
        start = time.perf_counter()
        try:
            out = call()
            self.samples[name].append(time.perf_counter() - start)
            return out
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                self.timeouts[name] += 1
            else:
                self.errors[name] += 1
        except Exception as exc:  # noqa: BLE001 - httpx: a timeout, or an answer that is not 200
            import httpx

            if isinstance(exc, httpx.TimeoutException):
                self.timeouts[name] += 1
            else:
                self.errors[name] += 1

    def run(self) -> None:
        small = request(steps=2, seed=7)
        while not self.stop.is_set():
            self._one("health", lambda: self.health.Check(health_pb2.HealthCheckRequest(), timeout=self.deadline_s))
            self._one("get_job", lambda: self.edit.GetJob(edit_pb2.GetJobRequest(job_id=self.job_id),
                                                          timeout=self.deadline_s))
            job = self._one("submit_edit", lambda: self.edit.SubmitEdit(small, timeout=self.deadline_s))
            if job is not None:
                self.submitted.append(job.id)
            if self.http_url:
                self._one("http_readyz", lambda: self._get("/readyz"))
                self._one("http_get_job", lambda: self._get(f"/v1/jobs/{self.job_id}"))
            self.stop.wait(self.every_s)

    def _get(self, path: str):
        import httpx

        if not hasattr(self, "_http"):  # one client, kept: a new one per probe costs ~0.1 s (SSL context)
            self._http = httpx.Client(base_url=self.http_url)
        r = self._http.get(path, timeout=self.deadline_s)
        if r.status_code != 200:
            raise RuntimeError(f"{path}: {r.status_code}")
        return r


async def load(target: str, job_ids: list[str], edits: int, hold_s: float, probe: Probe, http_url: str = "",
               sse_ids: list[str] = (), http_edits: int = 0, settle_s: float = 0.0) -> dict:
    """Open a stream per job and ``edits`` blocking Edits (and over HTTP: an SSE stream per ``sse_ids`` job
    and ``http_edits`` blocking edits), probe for ``hold_s``, then hang them all up."""
    channels = [grpc.aio.insecure_channel(target) for _ in range(8)]
    first_event = [0]
    first_sse = [0]
    ended: dict[str, int] = {}  # streams that ended early, by why
    edits_open = [0]
    http = None
    if http_url:
        import httpx

        http = httpx.AsyncClient(base_url=http_url, timeout=hold_s + 600,
                                 limits=httpx.Limits(max_connections=len(sse_ids) + http_edits + 10))

    async def sse(job_id: str):
        try:
            async with http.stream("GET", f"/v1/jobs/{job_id}/events") as resp:
                if resp.status_code != 200:
                    ended[f"SSE {resp.status_code}"] = ended.get(f"SSE {resp.status_code}", 0) + 1
                    return
                async for line in resp.aiter_lines():
                    if line.startswith("data:"):
                        first_sse[0] += 1
                        break
                await asyncio.sleep(hold_s + 600)  # stay connected
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - counted, reported
            ended[f"SSE {type(exc).__name__}"] = ended.get(f"SSE {type(exc).__name__}", 0) + 1

    async def http_edit(i: int):
        image = request().image
        await http.post("/v1/images/edits", data={"prompt": "make the sky purple", "size": "64x64",
                                                  "num_inference_steps": "2", "guidance_scale": "1",
                                                  "seed": str(5000 + i)},
                        files={"image": ("sample.png", image, "image/png")})

    async def watch(i: int, job_id: str):
        stub = edit_pb2_grpc.EditServiceStub(channels[i % len(channels)])
        call = stub.WatchJob(edit_pb2.WatchJobRequest(job_id=job_id), timeout=hold_s + 600)
        got = False
        try:
            async for _ in call:
                if not got:
                    first_event[0] += 1
                    got = True
        except grpc.RpcError as exc:
            ended[f"WatchJob {exc.code().name}"] = ended.get(f"WatchJob {exc.code().name}", 0) + 1
            ended.setdefault("first error", exc.details())
            raise

    async def blocking_edit(i: int):
        stub = edit_pb2_grpc.EditServiceStub(channels[i % len(channels)])
        edits_open[0] += 1
        await stub.Edit(request(steps=2, seed=1000 + i), timeout=hold_s + 600)

    tasks = [asyncio.create_task(watch(i, j)) for i, j in enumerate(job_ids)]
    tasks += [asyncio.create_task(blocking_edit(i)) for i in range(edits)]
    tasks += [asyncio.create_task(sse(j)) for j in sse_ids]
    tasks += [asyncio.create_task(http_edit(i)) for i in range(http_edits)]
    await asyncio.sleep(min(5.0, hold_s / 4))  # let them all reach the server before probing
    thread = threading.Thread(target=probe.run, daemon=True)
    thread.start()
    await asyncio.sleep(hold_s)
    probe.stop.set()
    await asyncio.get_running_loop().run_in_executor(None, thread.join)
    # Streams that have not heard their first event yet get ``settle_s`` more (a loaded machine is slow).
    settle_end = time.monotonic() + settle_s
    while (first_event[0] < len(job_ids) or first_sse[0] < len(sse_ids)) and time.monotonic() < settle_end:
        await asyncio.sleep(0.1)
    streams_with_event, sse_with_event = first_event[0], first_sse[0]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for c in channels:
        await c.close()
    if http is not None:
        await http.aclose()
    return {"streams": len(job_ids), "streams_with_first_event": streams_with_event, "edits": edits,
            "sse": len(sse_ids), "sse_with_first_event": sse_with_event, "http_edits": http_edits,
            "ended_early": ended}


def submit_jobs(target: str, n: int) -> list[str]:
    stub = edit_pb2_grpc.EditServiceStub(make_channel(target))
    req = request(steps=2, seed=3)
    return [stub.SubmitEdit(req, timeout=30).id for _ in range(n)]


def measure(tree: Path, redis: RedisProcess, namespace: str, args, log_dir: Path) -> dict:
    use_http = bool(args.sse or args.http_edits)
    proc, target, http_url = start_gateway(tree, redis.url, namespace, 20_000, log_dir / f"{namespace}.log",
                                           use_http)
    try:
        job_ids = submit_jobs(target, max(1, args.watchers, args.sse))
        probe = Probe(target, job_ids[0], args.deadline_s, args.every_s, http_url)
        result = asyncio.run(load(target, job_ids[:args.watchers], args.edits, args.probe_s, probe, http_url,
                                  job_ids[:args.sse], args.http_edits, args.settle_s))
        alive = proc.poll() is None
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    out = {"alive": alive, **result}
    for name, values in probe.samples.items():
        # A timed-out probe counts as the deadline (a lower bound): percentiles over every probe sent.
        censored = values + [args.deadline_s] * probe.timeouts[name]
        out[name] = {"n": len(values) + probe.timeouts[name] + probe.errors[name], "ok": len(values),
                     "timeouts": probe.timeouts[name], "errors": probe.errors[name],
                     "p50_ms": round(1000 * pct(censored, 0.5), 1), "p99_ms": round(1000 * pct(censored, 0.99), 1),
                     "ok_p50_ms": round(1000 * pct(values, 0.5), 1)}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tree", action="append", default=[], metavar="NAME=PATH", help="source trees (default: this one)")
    p.add_argument("--watchers", type=int, default=1000, help="concurrent WatchJob streams (one per queued job)")
    p.add_argument("--edits", type=int, default=100, help="concurrent blocking Edit calls")
    p.add_argument("--sse", type=int, default=0, help="concurrent HTTP SSE job-event streams (the same jobs)")
    p.add_argument("--http-edits", type=int, default=0, help="concurrent blocking HTTP /v1/images/edits")
    p.add_argument("--probe-s", type=float, default=30.0, help="how long to probe under load")
    p.add_argument("--settle-s", type=float, default=10.0,
                   help="after probing, how long streams still without their first event may take to get it")
    p.add_argument("--every-s", type=float, default=0.25, help="pause between probe rounds")
    p.add_argument("--deadline-s", type=float, default=2.0, help="each probe's deadline (past it: a timeout)")
    p.add_argument("--log-dir", default="", help="keep each gateway's log here (default: a temporary folder)")
    p.add_argument("--json", action="store_true", help="one JSON line per tree")
    args = p.parse_args(argv)
    trees = [t.split("=", 1) for t in args.tree] or [["this", str(ROOT)]]
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisProcess(Path(tmp)).start()
        try:
            base = None
            for i, (name, path) in enumerate(trees):
                r = measure(Path(path).resolve(), redis, f"load{i}", args, Path(args.log_dir or tmp))
                r["tree"] = name
                if args.json:
                    print(json.dumps(r), flush=True)
                    continue
                base = base or r
                print(f"{name}: {r['streams_with_first_event']}/{r['streams']} streams got an event, "
                      f"{r['edits']} blocking edits, {r['sse_with_first_event']}/{r['sse']} SSE streams got an "
                      f"event, {r['http_edits']} blocking HTTP edits, gateway {'alive' if r['alive'] else 'DEAD'}"
                      + (f", streams ended early: {r['ended_early']}" if r["ended_early"] else ""))
                for probe in [k for k in ("health", "get_job", "submit_edit", "http_readyz", "http_get_job")
                              if k in r]:
                    s, b = r[probe], base[probe]
                    print(f"  {probe:>11}: {s['ok']:4d} ok {s['timeouts']:4d} timeouts {s['errors']:3d} errors  "
                          f"p50 {s['p50_ms']:8.1f} ms  p99 {s['p99_ms']:8.1f} ms  "
                          f"({trees[0][0]} / this: p50 x{b['p50_ms'] / s['p50_ms']:.1f}, "
                          f"p99 x{b['p99_ms'] / s['p99_ms']:.1f})", flush=True)
        finally:
            redis.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
