"""The whole stack as real processes for the gateway end-to-end tests and the gateway bench.

A private Redis, the encoder, denoiser workers consuming the Redis stream, and one or more gateways, all on
free ports with the tiny model, plus the client-side helpers the tests share (watching a job to its end,
keeping the worker busy with a long job, reading the job store directly).
"""

from __future__ import annotations

import contextlib
import io
import signal
import threading
import time
from pathlib import Path

import grpc
import redis

from longcat.launch import ROOT, ServiceProcess
from longcat.rpc.channel import health_status, make_channel
from longcat.v1 import adapters_pb2_grpc, common_pb2, edit_pb2, edit_pb2_grpc

IMAGE = (ROOT / "examples" / "sample.png").read_bytes()
TERMINAL = (edit_pb2.SUCCEEDED, edit_pb2.FAILED, edit_pb2.CANCELLED)
STATE = edit_pb2.JobState.Name
LONG_SIDE = 768   # the "busy" job: 768x768 for up to 200 steps keeps a CPU worker busy for a minute or more
LONG_STEPS = 200


def start_service(name: str, args: list[str], log_dir: Path, port: int | None = None,
                  env: dict | None = None) -> ServiceProcess:
    """``ServiceProcess`` on a given port when one is given (to restart a service where clients expect it)."""
    svc = ServiceProcess(name, [*args, "--port", str(port)] if port else list(args), log_dir, env)
    if port:  # the last --port wins in argparse
        svc.port, svc.address = port, f"127.0.0.1:{port}"
    return svc


def wait_for(condition, timeout: float, what: str, period: float = 0.1):
    """Poll ``condition()`` until it returns something truthy; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(period)


def request(size: int | tuple[int, int] = 64, steps: int = 2, prompt: str = "make the sky purple",
            **kw) -> edit_pb2.EditRequest:
    w, h = (size, size) if isinstance(size, int) else size
    kw.setdefault("seed", 1)
    if kw["seed"] is None:  # unset: the server picks one
        del kw["seed"]
    kw.setdefault("guidance_scale", 1.0)  # one forward per step: the tests run on a small CPU
    adapters = [common_pb2.AdapterRef(name=n, scale=s) for n, s in kw.pop("adapters", [])]
    return edit_pb2.EditRequest(image=kw.pop("image", IMAGE), prompt=prompt, width=w, height=h,
                                num_inference_steps=steps, adapters=adapters, **kw)


def png_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    with Image.open(io.BytesIO(data)) as im:
        return im.size


def rpc_error(call, *args, **kw) -> grpc.RpcError:
    """The RpcError ``call`` raises (unary, or a stream read to its end); fails when it succeeds."""
    try:
        out = call(*args, **kw)
        if hasattr(out, "__iter__") and not hasattr(out, "SerializeToString"):
            list(out)
    except grpc.RpcError as err:
        return err
    raise AssertionError(f"{getattr(call, '_method', call)!r} succeeded; an error was expected")


class Stack:
    """One stack: Redis (shared or private), encoder, workers and gateways, all in namespace ``ns``."""

    def __init__(self, model: str, root: Path, redis_proc, ns: str = "lc", worker_args: tuple = (),
                 encoder_port: int | None = None):
        self.model = model
        self.root = Path(root)
        self.logs = self.root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.adapter_dir = self.root / "adapters"
        self.adapter_dir.mkdir(exist_ok=True)
        self.blob_dir = self.root / "blobs"   # reference images and results of this stack's jobs
        self.redis = redis_proc
        self.ns = ns
        self.worker_args = list(worker_args)
        self.encoder = start_service("encoder", ["--model", model], self.logs, port=encoder_port)
        self.workers: list[ServiceProcess] = []
        self.gateways: dict[str, ServiceProcess] = {}
        self._channels: dict[str, grpc.Channel] = {}
        self.r = redis.Redis.from_url(redis_proc.url, socket_timeout=10)

    # --- processes ---------------------------------------------------------------------------------------

    @property
    def stack_args(self) -> list[str]:
        return ["--redis-url", self.redis.url, "--namespace", self.ns, "--adapter-dir", str(self.adapter_dir),
                "--blob-dir", str(self.blob_dir)]

    def add_worker(self) -> ServiceProcess:
        w = ServiceProcess("denoiser", ["--model", self.model, *self.stack_args, "--encoder",
                                        self.encoder.address, *self.worker_args], self.logs)
        self.workers.append(w)
        return w

    def add_gateway(self, name: str, args: list[str] = (), env: dict | None = None) -> ServiceProcess:
        g = ServiceProcess("gateway", [*self.stack_args, *args], self.logs, env=env)
        self.gateways[name] = g
        return g

    def wait_serving(self, timeout: float = 240.0) -> "Stack":
        for svc in [self.encoder, *self.workers, *self.gateways.values()]:
            svc.wait_serving(timeout)
        return self

    def live_workers(self) -> list[ServiceProcess]:
        return [w for w in self.workers if w.proc.poll() is None]

    def ensure_workers(self, n: int) -> None:
        """Start workers until ``n`` are alive (after a test killed one)."""
        new = [self.add_worker() for _ in range(n - len(self.live_workers()))]
        for w in new:
            w.wait_serving(240)

    def restart_encoder(self) -> None:
        port = self.encoder.port
        if self.encoder.proc.poll() is None:
            self.encoder.stop()
        self.encoder = start_service("encoder", ["--model", self.model], self.logs, port=port)
        self.encoder.wait_serving(240)

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()
        for svc in [*self.gateways.values(), *self.workers, self.encoder]:
            svc.stop(signal.SIGTERM, timeout=30)
        self.r.close()

    def logs_tail(self) -> str:
        return "\n".join(f"--- {s.name} {s.address}\n{s.log()[-2000:]}" for s in
                         [*self.gateways.values(), *self.workers, self.encoder])

    # --- clients -------------------------------------------------------------------------------------------

    def channel(self, gateway: str = "main") -> grpc.Channel:
        if gateway not in self._channels:
            self._channels[gateway] = make_channel(self.gateways[gateway].address)
        return self._channels[gateway]

    def edit(self, gateway: str = "main") -> edit_pb2_grpc.EditServiceStub:
        return edit_pb2_grpc.EditServiceStub(self.channel(gateway))

    def adapters(self, gateway: str = "main") -> adapters_pb2_grpc.AdapterServiceStub:
        return adapters_pb2_grpc.AdapterServiceStub(self.channel(gateway))

    def health(self, gateway: str = "main") -> str:
        return health_status(self.channel(gateway))

    # --- the job store, read directly ------------------------------------------------------------------------

    def key(self, *parts: str) -> str:
        return ":".join([self.ns, *parts])

    def counters(self) -> tuple[int, int, int]:
        """(jobs ever created, jobs queued, stream entries). A stream entry is deleted when its worker acks
        it, a moment after the job's result is visible: compare the stream length only once it is settled."""
        return (int(self.r.get(self.key("seq")) or 0), self.r.zcard(self.key("edit", "queue")),
                self.r.xlen(self.key("edit", "stream")))

    def created_and_queued(self) -> tuple[int, int]:
        """(jobs ever created, jobs queued): both unchanged when a request is refused (nothing recorded, no
        XADD: the stream entry is written by the same Lua step as the job)."""
        return self.counters()[:2]

    def job_field(self, job_id: str, field: str) -> str | None:
        v = self.r.hget(self.key("job", job_id), field)
        return None if v is None else v.decode()

    def worker_pid(self, job_id: str) -> int | None:
        """The pid of the worker holding a RUNNING job (its fencing token is ``host-pid-xxxxxx:yyyyyyyy``)."""
        token = self.job_field(job_id, "worker")
        if not token:
            return None
        return int(token.rsplit(":", 1)[0].rsplit("-", 2)[1])


# --- job helpers ---------------------------------------------------------------------------------------------

def watch(stub, job_id: str, after: str = "", timeout: float = 300.0, metadata=None, until=None) -> list:
    """WatchJob's events until the terminal one (the stream ends there), or until ``until(event)`` is true."""
    events = []
    call = stub.WatchJob(edit_pb2.WatchJobRequest(job_id=job_id, after_event_id=after), timeout=timeout,
                         metadata=metadata)
    for ev in call:
        events.append(ev)
        if until is not None and until(ev):
            call.cancel()
            break
    return events


def terminal_events(events) -> list:
    return [ev for ev in events if ev.HasField("job") and ev.job.state in TERMINAL]


def progress_steps(events) -> list[int]:
    return [ev.progress.step for ev in events if ev.HasField("progress")]


def submit(stub, req, metadata=None, timeout: float = 3600.0):
    """SubmitEdit. The call's gRPC deadline becomes the job's deadline: an hour by default, i.e. none here."""
    return stub.SubmitEdit(req, timeout=timeout, metadata=metadata)


def wait_job(stub, job_id: str, states, timeout: float = 300.0, metadata=None):
    """Poll GetJob until the job is in one of ``states``."""
    states = {states} if isinstance(states, int) else set(states)
    return wait_for(lambda: (lambda j: j if j.state in states else None)(
        stub.GetJob(edit_pb2.GetJobRequest(job_id=job_id), timeout=30, metadata=metadata)),
        timeout, f"job {job_id} to reach {[STATE(s) for s in states]}", period=0.2)


@contextlib.contextmanager
def busy_worker(stub, metadata=None, side: int = LONG_SIDE, steps: int = LONG_STEPS):
    """Keep the (single) worker busy with a long job, already denoising; cancelled on the way out.

    Yields the long job's id. Jobs submitted meanwhile stay QUEUED behind it.
    """
    job = submit(stub, request(side, steps, prompt="a long job to keep the worker busy"), metadata)
    try:
        events = watch(stub, job.id, timeout=300, metadata=metadata, until=lambda ev: ev.HasField("progress"))
        assert events and events[-1].HasField("progress"), f"the long job never ran: {events}"
        yield job.id
    finally:
        stub.CancelJob(edit_pb2.CancelJobRequest(job_id=job.id), timeout=30, metadata=metadata)
        wait_job(stub, job.id, TERMINAL, timeout=120, metadata=metadata)


class Watcher(threading.Thread):
    """WatchJob in the background from the first event: what a client connected the whole time sees."""

    def __init__(self, stub, job_id: str, timeout: float = 300.0):
        super().__init__(daemon=True)
        self.stub, self.job_id, self.timeout = stub, job_id, timeout
        self.events: list = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for ev in self.stub.WatchJob(edit_pb2.WatchJobRequest(job_id=self.job_id), timeout=self.timeout):
                self.events.append(ev)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def result(self, timeout: float) -> list:
        self.join(timeout)
        assert not self.is_alive(), f"WatchJob({self.job_id}) did not end within {timeout}s"
        if self.error is not None:
            raise self.error
        return self.events
