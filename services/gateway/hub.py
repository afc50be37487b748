"""One event hub for every watcher of the gateway (gRPC WatchJob, blocking Edit, HTTP SSE and blocking edits).

Before, each watcher held a thread and a Redis connection in its own ``XREAD BLOCK`` loop, so 64 watchers
filled the gRPC handler pool and health checks queued behind them. Here a few reader threads each run ONE
``XREAD BLOCK`` over the event streams of all the jobs they watch (a job's watchers share the read, from the
oldest cursor among them) and hand the entries to each watcher's asyncio queue on the watcher's own event
loop. Once a second each reader also checks, in one pipeline, the state and queue position of the jobs
that had no event: that is how a watcher learns its position while QUEUED, and that its job expired or
ended without it seeing the terminal event. A watcher costs a coroutine and a queue, not a thread.

Same semantics as :func:`services.gateway.events.watch`: resume after ``after``, position updates while
QUEUED (with the last real event id), the terminal event ends the stream, a Redis failure answers
UNAVAILABLE to the watchers it hit.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import AsyncIterator

from prometheus_client import Gauge

from longcat.errors import InvalidArgument, Unavailable
from longcat.jobs.connection import REDIS_ERRORS
from longcat.jobs.store import TERMINAL_STATES, JobStore, as_str
from longcat.rpc.aio_handler import in_pool
from longcat.v1 import edit_pb2
from services.gateway.events import to_event

log = logging.getLogger("longcat.gateway.hub")
_CURSOR = re.compile(r"[0-9]{1,20}(-[0-9]{1,20})?")
WATCHERS = Gauge("longcat_gateway_watchers", "Calls waiting on job events (WatchJob, blocking edits, SSE)")


def stream_id(event_id: str) -> tuple[int, int]:
    """A Redis stream id ("ms-seq", or "0") as a comparable pair."""
    ms, _, seq = (event_id or "0").partition("-")
    return int(ms), int(seq or 0)


def check_cursor(after: str, field_name: str = "after_event_id") -> str:
    """A resume cursor Redis accepts (one watcher's bad id must never reach the XREAD it shares)."""
    if not after:
        return "0"
    if not _CURSOR.fullmatch(after) or max(stream_id(after)) >= 1 << 64:
        raise InvalidArgument(f"{after[:64]!r} is not an event id (they look like 1700000000000-0)", field_name)
    return after


@dataclass(eq=False)
class _Watcher:
    job_id: str
    kind: str
    last: str                                   # the last event id handed to it (owned by its reader)
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    quiet_since: float = field(default_factory=time.monotonic)
    told: tuple | None = None                   # the last state/position its reader told it (None: since events)

    def put(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # its loop is closed: the watcher is gone
            pass


class _Reader:
    """One thread, one blocking XREAD at a time over the streams of its watchers."""

    def __init__(self, hub: "EventHub", index: int):
        self.hub = hub
        self.watchers: set[_Watcher] = set()
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)
        self.thread = threading.Thread(target=self._run, name=f"event-hub-{index}", daemon=True)
        self.last_poll = time.monotonic()

    def add(self, w: _Watcher) -> None:
        with self.lock:
            self.watchers.add(w)
            self.wake.notify()

    def remove(self, w: _Watcher) -> None:
        with self.lock:
            self.watchers.discard(w)

    def _run(self) -> None:
        backoff, failing_since = 0.05, None
        while not self.hub.stopped.is_set():
            with self.lock:
                if not self.watchers:
                    self.wake.wait(0.5)
                    continue
                watchers = list(self.watchers)
            try:
                self._read(watchers)
                if time.monotonic() - self.last_poll >= self.hub.poll_s:
                    self.last_poll = time.monotonic()
                    self._poll(watchers)
                backoff, failing_since = 0.05, None
            except REDIS_ERRORS as exc:
                # A blip (a reconnect, a failover) is ridden out: the cursors are kept, nothing is lost. Past
                # ``give_up_s`` the watchers hear it (UNAVAILABLE) and may resume with their last event id.
                now = time.monotonic()
                failing_since = failing_since or now
                log.warning("event hub: redis error", extra={"error": repr(exc), "watchers": len(watchers)})
                if now - failing_since >= self.hub.give_up_s:
                    for w in watchers:
                        w.put(("error", f"the job queue (Redis) is unreachable: {exc}"))
                self.hub.stopped.wait(backoff)
                backoff = min(1.0, backoff * 2)
            except Exception:  # noqa: BLE001 - a reader must not die: log, tell its watchers, go on
                log.exception("event hub reader failed")
                for w in watchers:
                    w.put(("error", "the event hub failed reading job events"))
                self.hub.stopped.wait(0.5)

    def _read(self, watchers: list[_Watcher]) -> None:
        cursors: dict[str, str] = {}
        by_job: dict[str, list[_Watcher]] = {}
        for w in watchers:
            by_job.setdefault(w.job_id, []).append(w)
            cur = cursors.get(w.job_id)
            if cur is None or stream_id(w.last) < stream_id(cur):
                cursors[w.job_id] = w.last
        store = self.hub.store
        job_of = {store.k.events(job_id): job_id for job_id in cursors}
        streams = {key: cursors[job_id] or "0" for key, job_id in job_of.items()}
        got = store.r.xread(streams, count=self.hub.count, block=self.hub.block_ms)
        now = time.monotonic()
        for key, entries in got or ():
            job_id = job_of.get(as_str(key), "")
            for w in by_job.get(job_id, ()):
                mine = [(as_str(eid), {as_str(k): v for k, v in f.items()}) for eid, f in entries
                        if stream_id(as_str(eid)) > stream_id(w.last)]
                if mine:
                    w.last = mine[-1][0]
                    w.quiet_since, w.told = now, None
                    w.put(("events", mine))

    def _poll(self, watchers: list[_Watcher]) -> None:
        """State and queue position of the jobs whose watchers heard nothing for ``poll_s``, one round trip."""
        now = time.monotonic()
        quiet = [w for w in watchers if now - w.quiet_since >= self.hub.poll_s]
        if not quiet:
            return
        store = self.hub.store
        pipe = store.r.pipeline(transaction=False)
        for w in quiet:
            pipe.hget(store.k.job(w.job_id), "state")
            pipe.zrank(store.queue_key(w.kind), w.job_id)
        answers = pipe.execute()
        for i, w in enumerate(quiet):
            state, rank = answers[2 * i], answers[2 * i + 1]
            news = (as_str(state) if state is not None else None, 0 if rank is None else rank + 1)
            w.quiet_since = now
            # Only what the watcher acts on, once: gone, ended, or a new position while QUEUED (a thousand
            # idle watchers cost the event loops nothing).
            if news[0] in ("QUEUED", None, *TERMINAL_STATES) and news != w.told:
                w.told = news
                w.put(("state", *news))


class EventHub:
    """Shared by the doors of one gateway process; :meth:`watch` may be used from any event loop."""

    THREADS = 8  # for the (rare) terminal-event lookups

    def __init__(self, store: JobStore, readers: int = 4, block_ms: int = 250, poll_s: float = 1.0,
                 threads: int = THREADS, count: int = 100, give_up_s: float = 3.0):
        self.store = store
        self.give_up_s = give_up_s  # Redis failing this long: the watchers are told (UNAVAILABLE)
        self.block_ms = block_ms  # a new watcher waits at most this long for its reader to include it
        self.poll_s = poll_s
        self.count = count
        self.stopped = threading.Event()
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="event-hub-io")  # terminal lookups
        self.readers = [_Reader(self, i) for i in range(max(1, readers))]
        self._next = itertools.count()
        self._started = False
        self._start_lock = threading.Lock()
        WATCHERS.set_function(lambda: self.watching)

    def start(self) -> "EventHub":
        with self._start_lock:
            if not self._started:
                self._started = True
                for r in self.readers:
                    r.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        for r in self.readers:
            with r.lock:
                r.wake.notify()
        self.pool.shutdown(wait=False, cancel_futures=True)

    @property
    def watching(self) -> int:
        return sum(len(r.watchers) for r in self.readers)

    async def watch(self, job_id: str, after: str, kind: str) -> AsyncIterator[edit_pb2.JobEvent]:
        """Events of ``job_id`` after ``after`` until the terminal one (the caller checked ownership)."""
        after = check_cursor(after)
        self.start()
        w = _Watcher(job_id, kind, after, asyncio.get_running_loop())
        reader = self.readers[next(self._next) % len(self.readers)]
        reader.add(w)
        last_id, last_position = after, None
        try:
            while True:
                what, *payload = await w.queue.get()
                if what == "events":
                    for event_id, fields in payload[0]:
                        last_id = event_id
                        terminal = as_str(fields.get("kind", b"")) == "terminal"
                        ev = await in_pool(self.pool, to_event, self.store, job_id, event_id, fields) if terminal \
                            else to_event(self.store, job_id, event_id, fields)
                        if ev.HasField("queue_position"):
                            last_position = ev.queue_position
                        yield ev
                        if terminal:
                            return
                elif what == "state":
                    state, position = payload
                    if state is None:  # expired (or never was)
                        return
                    if state in TERMINAL_STATES:  # ended, its terminal event not read yet: relay the rest, end
                        for event_id, fields in await in_pool(self.pool, self.store.events, job_id, last_id,
                                                              None, 10000):
                            yield await in_pool(self.pool, to_event, self.store, job_id, event_id, fields)
                        return
                    if state == "QUEUED" and position != last_position:
                        last_position = position
                        yield edit_pb2.JobEvent(event_id=last_id if last_id != "0" else "", job_id=job_id,
                                                state=edit_pb2.QUEUED, queue_position=position)
                else:
                    raise Unavailable(payload[0])
        finally:
            reader.remove(w)
