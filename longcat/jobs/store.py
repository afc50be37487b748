"""The job store: records, the edit stream, events and results in Redis (see ``scripts.py`` for the
atomic state changes)."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

import redis

from longcat.api.bounds import clamp_int32
from longcat.api.keys import EDIT_GROUP, Keys
from longcat.errors import AlreadyExists, ResourceExhausted, Unavailable
from longcat.jobs import payloads, scripts
from longcat.v1 import common_pb2, edit_pb2

TERMINAL_STATES = ("SUCCEEDED", "FAILED", "CANCELLED")
_FLOATS = ("created_at", "started_at", "finished_at", "deadline")
_INTS = ("attempts", "seq", "step", "total_steps", "width", "height", "seed")


def as_str(v) -> str:
    """Redis replies are bytes; the job store speaks str."""
    return v.decode() if isinstance(v, bytes) else str(v)


def _int(v: str) -> int:
    """Exact for 63-bit values such as seeds (a float round trip would change them); tolerates '3.0'."""
    try:
        return int(v or 0)
    except ValueError:
        return int(float(v))


@dataclass
class JobView:
    """A job record as stored (the hash ``lc:job:<id>``)."""

    id: str
    kind: str = "edit"
    state: str = "QUEUED"
    owner: str = ""
    request_id: str = ""
    reason: str = ""
    error_code: str = ""
    created_at: float = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0
    deadline: float = 0.0
    attempts: int = 0
    seq: int = 0
    step: int = 0
    total_steps: int = 0
    width: int = 0
    height: int = 0
    seed: int = 0
    adapter_name: str = ""
    adapter_ref: str = ""  # a finished training job's published version, owner/name@vN
    timings: dict = field(default_factory=dict)
    cancel_requested: bool = False
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_hash(cls, job_id: str, raw: dict) -> "JobView":
        data = {as_str(k): as_str(v) for k, v in raw.items()}
        view = cls(id=job_id)
        for k, v in data.items():
            if k in _FLOATS:
                setattr(view, k, float(v or 0))
            elif k in _INTS:
                setattr(view, k, _int(v))
            elif k == "timings":
                view.timings = json.loads(v or "{}")
            elif k == "cancel_requested":
                view.cancel_requested = v == "1"
            elif k in ("kind", "state", "owner", "request_id", "reason", "error_code", "adapter_name",
                       "adapter_ref"):
                setattr(view, k, v)
            else:
                view.extra[k] = v
        return view

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def to_proto(self, result_png: bytes | None = None, position: int = 0) -> edit_pb2.Job:
        job = edit_pb2.Job(
            id=self.id, kind=edit_pb2.JobKind.Value(self.kind.upper()), state=edit_pb2.JobState.Value(self.state),
            reason=self.reason, error_code=self.error_code, created_at=self.created_at, started_at=self.started_at,
            finished_at=self.finished_at, queue_position=position, request_id=self.request_id,
            adapter_name=self.adapter_name, adapter_ref=self.adapter_ref, step=clamp_int32(self.step), total_steps=clamp_int32(self.total_steps),
            attempts=clamp_int32(self.attempts))
        if self.state == "SUCCEEDED" and self.kind == "edit":
            t = self.timings
            job.result.CopyFrom(edit_pb2.EditResult(
                image=result_png or b"", width=self.width, height=self.height, seed=self.seed, job_id=self.id,
                timings=common_pb2.Timings(**{k: float(t.get(k, 0.0)) for k in
                                              ("queued_s", "encode_s", "denoise_s", "decode_s", "total_s")})))
        return job


class TenantQuotaFull(ResourceExhausted):
    """One caller (an API key's owner) has its quota of queued + running jobs of a kind; others still submit."""

    def __init__(self, kind: str, active: int, limit: int):
        flag = "--max-active-per-tenant" if kind == "edit" else "--max-training-per-tenant"
        super().__init__(f"this caller already has {active} {kind} jobs queued or running, its per-tenant limit "
                         f"({flag}={limit}); retry once one of them finishes", "max_active_per_tenant"
                         if kind == "edit" else "max_training_per_tenant")
        self.kind, self.active, self.limit = kind, active, limit


class NotReplicated(Unavailable):
    """The primary recorded the submission, no replica confirmed it in time (durable acknowledgement)."""

    def __init__(self, message: str, job_id: str, created: bool):
        super().__init__(message)
        self.job_id, self.created = job_id, created


def _nogroup(exc: Exception) -> bool:
    """The edit stream's consumer group is missing (a promoted replica that never got it, a flushed Redis)."""
    return isinstance(exc, redis.ResponseError) and "NOGROUP" in str(exc)


class JobStore:
    """``durable_replicas`` > 0: a submission (and a finish) is confirmed only once ``WAIT`` reports that many
    replicas have it (within ``durable_timeout_ms``); otherwise the submission answers UNAVAILABLE, so an
    acknowledged job survives the loss of the primary. 0 (the default): acknowledged once the primary has it."""

    def __init__(self, client: redis.Redis, keys: Keys = Keys(), result_ttl_s: int = 3600,
                 idempotency_ttl_s: int = 86400, durable_replicas: int = 0, durable_timeout_ms: int = 1000,
                 blobs=None):
        self.r = client
        self.blobs = blobs  # longcat.blobs.BlobStore: large payloads, Redis keeps references (jobs/payloads.py)
        self.durable_replicas = durable_replicas
        self.durable_timeout_ms = durable_timeout_ms
        self.k = keys
        self.result_ttl_s = result_ttl_s
        self.idempotency_ttl_s = idempotency_ttl_s
        self._submit = client.register_script(scripts.SUBMIT)
        self._claim = client.register_script(scripts.CLAIM)
        self._finish = client.register_script(scripts.FINISH)
        self._cancel = client.register_script(scripts.CANCEL)
        self._progress = client.register_script(scripts.PROGRESS)
        self._update = client.register_script(scripts.UPDATE)
        self._pause = client.register_script(scripts.PAUSE)

    # --- gateway side -------------------------------------------------------------------------------------

    def queue_key(self, kind: str) -> str:
        return self.k.edit_queue if kind == "edit" else self.k.train_queue

    def submit(self, kind: str, owner: str, request: bytes, request_id: str = "", deadline: float = 0.0,
               max_queue: int = 0, fields: dict | None = None, priority: str = "normal", payload_hash: str = "",
               max_active: int = 0) -> tuple[str, bool, int]:
        """Record a job and queue it (edit jobs also go on the edit stream; training jobs are carried by
        Celery). Returns (job id, created, queue position). An edit goes on its priority's stream.

        The same (owner, request_id) with the same ``payload_hash`` returns the first job, not a new one;
        with another payload it raises :class:`AlreadyExists`. ``max_active`` > 0: the owner's queued and
        running jobs of this kind at most (:class:`TenantQuotaFull` beyond); a full queue raises
        :class:`ResourceExhausted`. A refused request writes nothing.
        """
        job_id = uuid.uuid4().hex
        now = time.time()
        flat = {"id": job_id, "kind": kind, "state": "QUEUED", "owner": owner, "request_id": request_id,
                "created_at": now, "deadline": deadline, "attempts": 0, **(fields or {})}
        argv = [job_id, max_queue, request, self.idempotency_ttl_s, now, int(bool(request_id)), 1,
                int(kind == "edit"), payload_hash, max_active, self.k.job("")]
        for k, v in flat.items():
            argv += [k, json.dumps(v) if isinstance(v, dict) else v]
        rid = request_id or "-"
        keys = [self.k.idempotency(owner, rid), self.k.job(job_id), self.k.request(job_id), self.queue_key(kind),
                self.k.edit_stream_for(priority), self.k.events(job_id), self.k.sequence, self.k.owner_jobs(owner),
                self.k.idempotency_payload(owner, rid), self.k.owner_active(owner, kind)]
        (status, existing, position), replicas = self._write(self._submit, keys, argv)
        if status == -1:
            raise ResourceExhausted(f"the {kind} queue is full ({position} jobs waiting); retry in a few "
                                    "seconds", "queue")
        if status == -2:
            raise TenantQuotaFull(kind, int(position), max_active)
        if status == -3:
            raise AlreadyExists(f"{request_id[:64]!r} was already used by this caller for another {kind} request "
                                f"(job {as_str(existing)}); use a new request_id for a new request", "request_id")
        if replicas < self.durable_replicas:
            raise NotReplicated(f"the job queue's primary took the job but {replicas} of {self.durable_replicas} "
                              f"replica(s) confirmed it within {self.durable_timeout_ms} ms, so a failover could "
                              "lose it; retry with the same request_id (it returns this job if it was kept)",
                                as_str(existing), status == 1)
        return as_str(existing), status == 1, int(position)

    def active_count(self, owner: str, kind: str) -> int:
        """The owner's queued + running jobs of ``kind`` (what its quota counts)."""
        return int(self.r.scard(self.k.owner_active(owner, kind)))

    def _write(self, script, keys: list, args: list):
        """Run a write script; with durable acknowledgement, ``WAIT`` on the same connection right after it
        (WAIT counts the replicas that have every write this connection made). -> (result, replicas)."""
        if not self.durable_replicas:
            return script(keys=keys, args=args), 0
        pipe = self.r.pipeline(transaction=False)
        script(keys=keys, args=args, client=pipe)
        pipe.execute_command("WAIT", self.durable_replicas, self.durable_timeout_ms)
        result, replicas = pipe.execute()
        return result, int(replicas)

    def get(self, job_id: str) -> JobView | None:
        raw = self.r.hgetall(self.k.job(job_id))
        return JobView.from_hash(job_id, raw) if raw else None

    def position(self, job_id: str, kind: str = "edit") -> int:
        rank = self.r.zrank(self.queue_key(kind), job_id)
        return 0 if rank is None else rank + 1

    def queue_depth(self) -> int:
        return int(self.r.zcard(self.k.edit_queue))

    def to_proto(self, view: JobView) -> edit_pb2.Job:
        try:
            png = self.result(view.id, view) if view.state == "SUCCEEDED" else None
        except payloads.BlobMissing as exc:  # the job stays readable; its reason says where the image went
            png, view.reason = None, str(exc)
        return view.to_proto(png, self.position(view.id, view.kind) if view.state == "QUEUED" else 0)

    def cancel(self, job_id: str, kind: str = "edit") -> str:
        state = as_str(self._cancel(keys=[self.k.job(job_id), self.queue_key(kind), self.k.events(job_id),
                                          self.k.request(job_id)], args=[job_id, time.time(), self.result_ttl_s]))
        if state == "CANCELLED":
            self.release_request(job_id)
        return state

    def events(self, job_id: str, after: str = "0", block_ms: int | None = None, count: int = 100):
        """[(event id, fields)] after ``after``; blocks up to ``block_ms`` for new ones."""
        out = self.r.xread({self.k.events(job_id): after or "0"}, count=count, block=block_ms)
        return [(as_str(eid), {as_str(k): v for k, v in f.items()}) for _, entries in out for eid, f in entries]

    def list(self, owner: str | None, kind: str = "", state: str = "", limit: int = 100) -> list[JobView]:
        owners = [owner] if owner is not None else [
            as_str(k).split(":")[-2] for k in self.r.scan_iter(match=self.k.owner_jobs("*"), count=1000)]
        ids = []
        for o in owners:
            ids += [as_str(i) for i in self.r.zrevrange(self.k.owner_jobs(o), 0, max(limit, 1) * 4)]
        views = [v for v in (self.get(i) for i in ids) if v is not None]
        views = [v for v in views if (not kind or v.kind == kind) and (not state or v.state == state)]
        return sorted(views, key=lambda v: -v.created_at)[:limit]

    # --- worker side --------------------------------------------------------------------------------------

    def request_bytes(self, job_id: str) -> bytes | None:
        return self.r.get(self.k.request(job_id))

    def claim(self, job_id: str, token: str, max_attempts: int, kind: str = "edit") -> tuple[str, int]:
        outcome, attempts = self._claim(
            keys=[self.k.job(job_id), self.queue_key(kind), self.k.events(job_id), self.k.edit_dead],
            args=[job_id, token, time.time(), max_attempts, self.result_ttl_s])
        if as_str(outcome) in ("EXPIRED", "DEAD"):  # made terminal here: its reference image expires with it
            self.release_request(job_id)
        return as_str(outcome), int(attempts)

    def finish(self, job_id: str, token: str, state: str, error_code: str = "", reason: str = "",
               fields: dict | None = None) -> bool:
        argv = [token, state, time.time(), error_code, reason, self.result_ttl_s]
        for k, v in (fields or {}).items():
            argv += [k, json.dumps(v) if isinstance(v, dict) else v]
        # Durable: a result the client saw survives a failover (best effort: a missing replica only risks a
        # re-run after a failover, which the fencing token keeps to one terminal state).
        done, _ = self._write(self._finish, [self.k.job(job_id), self.k.events(job_id), self.k.request(job_id),
                                             self.k.result(job_id)], argv)
        if done:
            self.release_request(job_id)
        return bool(done)

    def progress(self, job_id: str, token: str, event: dict) -> bool:
        """Append an event if the job is still this worker's; False means stop (taken over or finished)."""
        return bool(self._progress(keys=[self.k.job(job_id), self.k.events(job_id)],
                                   args=self._progress_args(token, event)))

    def _progress_args(self, token: str, event: dict) -> list:
        argv = [token, time.time()]
        event = payloads.offload_large(self.blobs, event, self.result_ttl_s)  # large images: references
        for k, v in {"time": time.time(), **event}.items():
            argv += [k, v]
        return argv

    def progress_many(self, items: list[tuple[str, str, dict]]) -> list[tuple[bool, bool]]:
        """:meth:`progress` for several jobs (a batched step's), and whether each was asked to cancel, in one
        round trip: [(still this worker's, cancel requested)] in the order of ``items`` (job id, token, event)."""
        if not items:
            return []
        pipe = self.r.pipeline(transaction=False)
        for job_id, token, event in items:
            self._progress(keys=[self.k.job(job_id), self.k.events(job_id)], args=self._progress_args(token, event),
                           client=pipe)
            pipe.hget(self.k.job(job_id), "cancel_requested")
        out = pipe.execute()
        return [(bool(out[i]), out[i + 1] == b"1") for i in range(0, len(out), 2)]

    def add_event(self, job_id: str, event: dict) -> str:
        event = payloads.offload_large(self.blobs, event, self.result_ttl_s)
        return as_str(self.r.xadd(self.k.events(job_id), {"time": time.time(), **event}, maxlen=10000,
                              approximate=True))

    def update(self, job_id: str, token: str, **fields) -> bool:
        """Set fields of the job if it is still this worker's (fenced like every other state change)."""
        argv = [token]
        for k, v in fields.items():
            argv += [k, json.dumps(v) if isinstance(v, dict) else v]
        return bool(self._update(keys=[self.k.job(job_id)], args=argv))

    def record_error(self, job_id: str, token: str, code: str, message: str) -> bool:
        return self.update(job_id, token, last_error_code=code, last_error=message[:2000])

    def pause(self, job_id: str, token: str, message: str) -> bool:
        """This worker hands a RUNNING job back (shutdown at a checkpoint): not a failed attempt."""
        argv = [token]
        for k, v in {"time": time.time(), "kind": "message", "state": "RUNNING", "message": message}.items():
            argv += [k, v]
        return bool(self._pause(keys=[self.k.job(job_id), self.k.events(job_id)], args=argv))

    # --- training jobs held by workers (the reaper's view) ---------------------------------------------

    def lease(self, job_id: str, token: str, ttl_s: float):
        from longcat.jobs.lease import Lease

        return Lease(self.r, self.k.train_lease(job_id), token, ttl_s)

    def drop_lease_of(self, job_id: str, token_prefix: str) -> bool:
        """Delete the job's lease if its token starts with ``token_prefix`` (a dead run of this same worker)."""
        from longcat.jobs.lease import drop_if_prefixed

        return drop_if_prefixed(self.r, self.k.train_lease(job_id), token_prefix)

    def lease_held(self, job_id: str) -> bool:
        return bool(self.r.exists(self.k.train_lease(job_id)))

    def mark_active(self, job_id: str) -> None:
        self.r.sadd(self.k.train_active, job_id)

    def unmark_active(self, job_id: str) -> None:
        self.r.srem(self.k.train_active, job_id)

    def active_training_jobs(self) -> list[str]:
        return [as_str(raw) for raw in self.r.smembers(self.k.train_active)]

    def is_active(self, job_id: str) -> bool:
        return bool(self.r.sismember(self.k.train_active, job_id))

    def queued_training_jobs(self) -> list[str]:
        return [as_str(raw) for raw in self.r.zrange(self.k.train_queue, 0, -1)]

    def try_lock(self, name: str, ttl_ms: int) -> bool:
        """A best-effort lock (one reaper pass, one redispatch per attempt), expiring by itself."""
        return bool(self.r.set(self.k.lock(name), "1", nx=True, px=ttl_ms))

    def cancel_requested(self, job_id: str) -> bool:
        return self.r.hget(self.k.job(job_id), "cancel_requested") == b"1"

    def set_result(self, job_id: str, png: bytes) -> dict:
        """Store a result PNG; -> job fields for the finish to record (its blob reference, with a blob store)."""
        if self.blobs is not None:
            return payloads.store_result(self.blobs, png, self.result_ttl_s)
        self.r.set(self.k.result(job_id), png, ex=self.result_ttl_s)
        return {}

    def result(self, job_id: str, view: JobView | None = None) -> bytes | None:
        """The result PNG: a blob the job record names, else the Redis key (results stored without blobs)."""
        view = view or self.get(job_id)
        png = payloads.read_result(self.blobs, view) if view is not None else None
        return png if png is not None else self.r.get(self.k.result(job_id))

    def release_request(self, job_id: str) -> None:
        """A terminal job's reference image blob expires with its request record (``result_ttl_s``)."""
        if self.blobs is not None:
            payloads.release(self.blobs, {payloads.IMAGE: self.r.hget(self.k.job(job_id), payloads.IMAGE)},
                             payloads.IMAGE, ttl_s=self.result_ttl_s)

    # --- the edit stream and its consumer group --------------------------------------------------------

    def ensure_group(self) -> None:
        for stream in self.k.edit_streams:
            try:
                self.r.xgroup_create(stream, EDIT_GROUP, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def read_new(self, consumer: str, block_ms: int | None, count: int = 1) -> list[tuple[str, str, str]]:
        """Up to ``count`` new entries, highest priority stream first: [(stream, entry id, job id)].
        ``block_ms`` None: do not wait."""
        try:
            return self._read_new(consumer, block_ms, count)
        except redis.ResponseError as exc:
            if not _nogroup(exc):
                raise
            self.ensure_group()  # from id 0: entries still in the streams are delivered (claims are fenced)
            return []

    def _read_new(self, consumer: str, block_ms: int | None, count: int) -> list[tuple[str, str, str]]:
        out: list[tuple[str, str, str]] = []
        for stream in self.k.edit_streams:  # one stream at a time, so a HIGH entry is never crowded out
            got = self.r.xreadgroup(EDIT_GROUP, consumer, {stream: ">"}, count=count - len(out))
            out += [(stream, as_str(eid), as_str(f[b"job"])) for _, entries in got for eid, f in entries]
            if len(out) >= count:
                return out
        if not out and block_ms is not None:  # nothing anywhere: wait on all of them at once
            got = self.r.xreadgroup(EDIT_GROUP, consumer, {s: ">" for s in self.k.edit_streams}, count=1,
                                    block=block_ms)
            out = [(as_str(st), as_str(eid), as_str(f[b"job"])) for st, entries in got for eid, f in entries]
        return out

    def read_own_pending(self, consumer: str, count: int = 100) -> list[tuple[str, str, str]]:
        """Entries delivered to ``consumer`` and never acknowledged (its PEL, read with id 0): a worker restarted
        under the same name, or back from a Redis outage, resumes them at once instead of waiting for another
        worker to reclaim them."""
        out = []
        for stream in self.k.edit_streams:
            try:
                got = self.r.xreadgroup(EDIT_GROUP, consumer, {stream: "0"}, count=count)
            except redis.ResponseError as exc:
                if not _nogroup(exc):
                    raise
                self.ensure_group()
                continue
            for _, entries in got:
                for eid, f in entries:
                    if f:
                        out.append((stream, as_str(eid), as_str(f[b"job"])))
                    else:  # trimmed away: nothing to run, drop it from the PEL
                        self.r.xack(stream, EDIT_GROUP, eid)
        return out

    def reclaim_stale(self, consumer: str, min_idle_ms: int, count: int = 1) -> list[tuple[str, str, str]]:
        """Take over entries whose worker stopped heart-beating (died) for ``min_idle_ms``."""
        out = []
        for stream in self.k.edit_streams:
            try:
                _, entries, deleted = self.r.xautoclaim(stream, EDIT_GROUP, consumer, min_idle_ms,
                                                        start_id="0-0", count=count)
            except redis.ResponseError as exc:
                if not _nogroup(exc):
                    raise
                self.ensure_group()
                continue
            for eid in deleted or ():  # entries trimmed away: nothing to run, drop them from the PEL
                self.r.xack(stream, EDIT_GROUP, eid)
            out += [(stream, as_str(eid), as_str(f[b"job"])) for eid, f in entries if f]
        return out

    def heartbeat(self, consumer: str, entry_id: str | list[str], stream: str | None = None) -> None:
        """Reset the entries' idle time: their jobs are alive on this worker."""
        ids = [entry_id] if isinstance(entry_id, str) else list(entry_id)
        if not ids:
            return
        try:
            self.r.xclaim(stream or self.k.edit_stream, EDIT_GROUP, consumer, 0, ids, justid=True)
        except redis.ResponseError as exc:
            if not _nogroup(exc):
                raise
            self.ensure_group()  # the entries are redelivered from the new group; our claims stay fenced

    def ack(self, entry_id: str, stream: str | None = None) -> None:
        stream = stream or self.k.edit_stream
        try:
            self.r.xack(stream, EDIT_GROUP, entry_id)
        except redis.ResponseError as exc:
            if not _nogroup(exc):
                raise
        self.r.xdel(stream, entry_id)

    def lag(self) -> int:
        """Entries not yet delivered to any worker plus those in flight (what autoscaling reads)."""
        return sum(int(self.r.xlen(stream)) for stream in self.k.edit_streams)
