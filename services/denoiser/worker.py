"""The denoiser's edit worker: consumes edit jobs from the Redis streams (one per priority) with a consumer
group and runs them through the step scheduler (longcat/engine/step_scheduler.py), many in flight.

Each step boundary: take over dead workers' entries, read new ones (highest priority stream first) into a
small local waiting list, admit jobs while the scheduler has room (claim fenced by a per-attempt token, ask
the encoder service for embeddings over gRPC, encode the reference), run one batched step, finish the jobs
that ended (decode, store the PNG, finish, acknowledge). Every entry this worker holds, waiting or in flight,
is heart-beaten; a killed worker leaves all of them pending and, once silent, another worker reclaims each
one (fencing makes a late write of the dead attempt a no-op). After ``max_attempts`` deliveries a job is
FAILED with its last error (dead letter), never looped forever.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass

from longcat.api.edit import validate_request
from longcat.api.edit_proto import priority_of, request_from_proto
from longcat.api.presets import EXACT
from longcat.conditioning import reference_pixels, to_pil
from longcat.engine.denoise import DenoiseJob, StepEvent
from longcat.engine.stage import StageRequest, run_denoise_stage
from longcat.engine.step_scheduler import HIGH, LOW, NORMAL, SchedulerBounds, StepJob, StepScheduler
from longcat.errors import Cancelled, DeadlineExceeded, InvalidArgument, LongCatError, NotFound, Unavailable
from longcat.images import encode_png
from longcat.jobs import payloads
from longcat.jobs.connection import REDIS_ERRORS
from longcat.jobs.store import JobStore
from longcat.logs import job_context, request_id
from longcat.rpc import metrics
from longcat.tracing import end_span, set_error, start_span, use_span
from longcat.v1 import edit_pb2
from services.denoiser.servicer import DenoiserBackend

log = logging.getLogger("longcat.denoiser.worker")

# Errors that no retry can fix: the job fails at once. Anything else is retried on another delivery.
PERMANENT = (InvalidArgument, NotFound, DeadlineExceeded)
PUBLIC_REASONS = {
    "UNAVAILABLE": "the encoder service was unreachable",
    "DEADLINE_EXCEEDED": "the encoder service did not answer in time",
    "RESOURCE_EXHAUSTED": "the worker ran out of memory or capacity",
}
LEVELS = {"low": LOW, "normal": NORMAL, "high": HIGH}


@dataclass
class Entry:
    """A stream entry this worker holds (waiting, then in flight)."""

    stream: str
    entry_id: str
    job_id: str
    priority: int = NORMAL
    tenant: str = ""
    seq: int = 0
    token: str = ""
    started: float = 0.0
    encoded: float = 0.0
    created_at: float = 0.0
    steps: int = 0
    attempt: int = 0
    traceparent: str = ""  # the submitting call's trace (longcat.tracing): the job's span continues it
    span: object = None    # the job's span on this worker, from its start to its ack or drop


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def _per_job(method):
    """Run a method about one entry (or its StepJob) with the job's log fields and its span current."""
    @functools.wraps(method)
    def run(self, item, *args):
        e: Entry = getattr(item, "tag", item)
        if e.span is None:
            e.span = start_span("denoiser.job", e.traceparent, {"longcat.job_id": e.job_id,
                                                                "longcat.tenant": e.tenant})
        with job_context(e.job_id, e.tenant), use_span(e.span):
            return method(self, item, *args)
    return run


class JobTakenOver(Exception):
    """Our claim on the job ended (another worker reclaimed it, or it finished): stop quietly."""


class EditWorker:
    def __init__(self, store: JobStore, backend: DenoiserBackend, encoder, heartbeat_timeout_s: float = 6.0,
                 max_attempts: int = 3, block_ms: int = 1000, name: str | None = None,
                 encoder_timeout_s: float = 60.0, bounds: SchedulerBounds | None = None, lookahead: int = 0):
        self.store = store
        self.backend = backend
        self.encoder = encoder
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.max_attempts = max_attempts
        self.encoder_timeout_s = encoder_timeout_s  # an attempt waits this long for the encoder, then fails
        self.block_ms = block_ms
        # The consumer name is stable across restarts when ``name`` is (see --worker-id): a restarted worker
        # finds its own pending entries under it and resumes them at once.
        self.consumer = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        # Fencing tokens stay unique per process (and name the pid, which operators and tests read).
        self._token_prefix = self.consumer if not name else f"{name}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.scheduler = StepScheduler(backend.loop, backend.adapters, bounds)
        # Entries read but not yet admitted: enough to choose by priority and tenant, never more than this.
        self.lookahead = lookahead or 2 * self.scheduler.bounds.max_inflight
        self.waiting: list[Entry] = []
        self.held: dict[str, Entry] = {}  # entry id -> entry, waiting or in flight: heart-beaten
        self._held_lock = threading.Lock()
        self._seq = 0
        self._served: dict[str, float] = {}  # tenant -> last admission (round-robin within a priority)
        self._progress: list[tuple[StepJob, dict]] = []  # this step's events, not yet written
        self.stopping = threading.Event()
        self.idle = threading.Event()
        self.idle.set()

    # --- the loop ----------------------------------------------------------------------------------------

    def run_forever(self) -> None:
        backoff = 0.2
        next_reclaim = 0.0
        resume_own = True  # at start, and again after Redis came back: our own pending entries first
        log.info("worker started", extra={"consumer": self.consumer, **dataclasses.asdict(self.scheduler.bounds)})
        done = threading.Event()
        heart = threading.Thread(target=self._heartbeat, args=(done,), name="edit-heartbeat", daemon=True)
        heart.start()
        try:
            while not self.stopping.is_set() or self.scheduler.active:
                try:
                    if not self.stopping.is_set():
                        if resume_own:  # at start and after an outage (each read also recreates a lost group)
                            self.store.ensure_group()
                            self._take(self.store.read_own_pending(self.consumer, self.lookahead), resumed=True)
                            resume_own = False
                        if time.monotonic() >= next_reclaim:  # dead workers' jobs first, even when we are full:
                            # they started already (their deadline runs), so they wait ahead of new entries
                            self._take(self.store.reclaim_stale(self.consumer, int(self.heartbeat_timeout_s * 1000),
                                                                count=max(1, self._room())), resumed=True)
                            next_reclaim = time.monotonic() + max(0.5, self.heartbeat_timeout_s / 4)
                        self._read_new(block=not self.scheduler.active and not self.waiting)
                        self._admit()
                    if self.scheduler.active:
                        self.idle.clear()
                        ended = self.scheduler.step()
                        self._flush_progress()  # the step's events before any of its jobs' ends
                        for sj in ended:
                            self._ended(sj)
                    if not self.scheduler.active:
                        self.idle.set()
                    backoff = 0.2
                except REDIS_ERRORS as exc:
                    log.warning("redis unreachable; retrying", extra={"error": str(exc), "retry_in_s": backoff})
                    resume_own = True
                    self.stopping.wait(backoff)
                    backoff = min(backoff * 2, 2.0)  # a short outage costs at most ~2 s more
                except Exception:  # noqa: BLE001 - a worker never dies of one bad job
                    log.exception("worker loop error")
                    self.stopping.wait(1.0)
        finally:
            done.set()
            self.idle.set()
        log.info("worker stopped", extra={"consumer": self.consumer})

    def stop(self) -> None:
        self.stopping.set()

    def _room(self) -> int:
        return max(0, self.lookahead - len(self.waiting))

    def _read_new(self, block: bool = False) -> None:
        room = self._room()
        if room:
            self._take(self.store.read_new(self.consumer, self.block_ms if block else None, room))

    def _take(self, entries, resumed: bool = False) -> None:
        for stream, entry_id, job_id in entries:
            if entry_id in self.held:
                continue
            view = self.store.get(job_id)
            level = LEVELS.get((view.extra.get("priority") if view else "") or "", NORMAL)
            self._seq += 1
            # A resumed entry (reclaimed, or our own from before a restart) goes before new ones of its level.
            e = Entry(stream, entry_id, job_id, level, view.owner if view else "", self._seq - (1 << 40) * resumed,
                      traceparent=view.extra.get("traceparent", "") if view else "")
            with self._held_lock:
                self.held[entry_id] = e
            self.waiting.append(e)

    # --- admission ---------------------------------------------------------------------------------------

    def _admissible(self, e: Entry) -> bool:
        """The last ``bounds.reserved`` slots are kept for a HIGH job or a tenant with nothing in flight, so
        neither waits for a whole batch of a flooding tenant's jobs to end. A job below the priority in flight
        waits in the queue (nothing is lost: a LOW job already running still pauses and resumes)."""
        bounds = self.scheduler.bounds
        free = bounds.max_inflight - len(self.scheduler.active)
        if free <= 0:
            return False
        if self.scheduler.active and e.priority < max(sj.priority for sj in self.scheduler.active):
            return False  # it would only wait, paused, and its admission (encode) would delay the higher job
        if free > bounds.reserved:
            return True
        return e.priority == HIGH or not any(sj.tag.tenant == e.tenant for sj in self.scheduler.active)

    def _admit(self) -> None:
        """Highest priority first; within it the tenant admitted least recently, then arrival order."""
        while self.waiting:
            order = sorted(self.waiting, key=lambda e: (-e.priority, self._served.get(e.tenant, 0.0), e.seq))
            e = next((x for x in order if self._admissible(x)), None)
            if e is None:
                return
            self.waiting.remove(e)
            self._served[e.tenant] = time.monotonic()
            if not self._start(e):
                return
            self._read_new()  # an admission takes a while (the encoder): a HIGH edit sent meanwhile goes next

    @_per_job
    def _start(self, e: Entry) -> bool:
        """Claim, encode, admit; False when the job must wait (its adapters do not fit beside those in use)."""
        e.token = f"{self._token_prefix}:{uuid.uuid4().hex[:8]}"
        outcome, attempts = self.store.claim(e.job_id, e.token, self.max_attempts)
        e.attempt = attempts
        if outcome != "RUNNING":  # cancelled while queued, expired, dead-lettered, or already done
            log.info("job not run", extra={"job_id": e.job_id, "outcome": outcome, "attempts": attempts})
            self._ack(e)
            return True
        rid = request_id.set(e.job_id)
        try:
            sj = self._prepare(e)
            if self.scheduler.active and not self.scheduler.has_room(sj.adapters):
                # Its adapters would break the loaded-adapter bound beside those in use: wait for them to end.
                self.store.pause(e.job_id, e.token, "waiting for adapter room on this worker")
                self.waiting.append(e)
                return False
            if sj.job.speed_preset != EXACT:
                self._run_alone(sj)
            else:
                self.scheduler.admit(sj)
        except REDIS_ERRORS:
            raise
        except BaseException as exc:  # noqa: BLE001 - per job, as in _ended
            self._failed(e, exc, attempts)
        finally:
            request_id.reset(rid)
        return True

    def _prepare(self, e: Entry) -> StepJob:
        view = self.store.get(e.job_id)
        raw = self.store.request_bytes(e.job_id)
        if view is None or raw is None:
            raise NotFound("the job's request expired before it ran", "job_id")
        msg = edit_pb2.EditRequest.FromString(raw)
        payloads.load_reference(self.store.blobs, msg, view)  # the reference image, stored as a blob
        req = validate_request(request_from_proto(msg, self.backend.defaults), self.backend.limits)
        self.backend.gate.check(req.speed_preset, [a.name for a in req.adapters])  # before any work
        e.priority = LEVELS[priority_of(msg)]
        e.started, e.created_at, e.steps = time.time(), view.created_at, req.num_inference_steps
        deadline = view.deadline
        enc = self._encode(req, msg, e.job_id, deadline)
        loop = self.backend.loop
        reference = loop.encode_reference(reference_pixels(req.image, req.geometry))
        e.encoded = time.time()
        negative = None if enc.negative_embeds is None else enc.negative_embeds.to(loop.dtype)
        job = DenoiseJob(enc.prompt_embeds.to(loop.dtype), negative, reference, req.geometry,
                         req.num_inference_steps, req.guidance_scale, req.seed, req.speed_preset)
        sj = StepJob(job, adapters=[(a.name, a.scale) for a in req.adapters], priority=e.priority,
                     tenant=e.tenant, batchable=req.speed_preset == EXACT, cancel=threading.Event(),
                     deadline=deadline, preview_every=max(0, msg.preview_every), tag=e, job_id=e.job_id)
        sj.on_step = functools.partial(self._queue_progress, sj)
        return sj

    def _queue_progress(self, sj: StepJob, ev: StepEvent) -> None:
        """A step's progress event, written with the rest of its batch's by :meth:`_flush_progress`."""
        event = {"kind": "progress", "state": "RUNNING", "step": ev.step, "total": ev.total,
                 "elapsed_s": ev.elapsed_s, "eta_s": ev.eta_s}
        if ev.preview is not None:
            event["preview_png"] = encode_png(to_pil(ev.preview)[0])
        self._progress.append((sj, event))

    def _flush_progress(self) -> None:
        """One round trip for every job of the step: its event (fenced: a job another worker took over, or one
        already ended, stops here) and its cancel flag (it stops at the next step boundary)."""
        queued, self._progress = self._progress, []
        try:
            answers = self.store.progress_many([(sj.tag.job_id, sj.tag.token, event) for sj, event in queued])
        except REDIS_ERRORS:
            return  # a Redis blip costs one progress event, not the jobs (the heartbeat keeps the entries ours)
        for (sj, _), (still_ours, cancel) in zip(queued, answers):
            if not still_ours and sj.error is None:
                sj.error = JobTakenOver()
            if cancel:
                sj.cancel.set()

    def _run_alone(self, sj: StepJob) -> None:
        """A non-exact speed preset runs start to end through the one denoise stage, between two batched steps:
        its step cache keeps per-run state that steps of other jobs would corrupt (its hooks are applied and
        removed around this run only). The batch waits meanwhile; the job ends like any other."""
        job = sj.job

        def on_step(ev: StepEvent) -> None:
            sj.on_step(ev)
            self._flush_progress()
            if sj.error is not None:
                raise sj.error
            if sj.deadline and time.time() > sj.deadline:
                raise DeadlineExceeded("its deadline passed during the run; it was not finished")

        try:
            stage = run_denoise_stage(self.backend.loop, self.backend.adapters, StageRequest(
                job.prompt_embeds, job.negative_embeds, job.geometry, job.steps, job.guidance_scale, job.seed,
                reference_latents=job.reference_latents, adapters=sj.adapters, speed_preset=job.speed_preset),
                on_step=on_step, cancel=sj.cancel, preview_every=sj.preview_every, decode=False)
            sj.latents = stage.latents
        except BaseException as exc:  # noqa: BLE001 - the job's own outcome, handled as the scheduler's are
            sj.error = exc
        self._ended(sj)

    def _encode(self, req, msg, job_id: str, deadline: float):
        """Embeddings from the encoder service; waits for it up to ``encoder_timeout_s`` (or the job's deadline)."""
        wait = self.encoder_timeout_s if not deadline else min(self.encoder_timeout_s, max(1.0, deadline - time.time()))
        try:
            return self.encoder.encode(req.prompt, msg.image, req.geometry.width, req.geometry.height,
                                       negative_prompt=req.negative_prompt, with_negative=req.do_cfg,
                                       truncate_prompt=req.truncate_prompt, timeout=wait,
                                       metadata=[("x-request-id", job_id)])
        except DeadlineExceeded:
            if deadline and time.time() >= deadline:
                raise DeadlineExceeded("its deadline passed during the run; it was not finished") from None
            # Our own wait ran out, not the client's deadline: the encoder is down, retry on another delivery.
            raise Unavailable("the encoder service was unreachable") from None

    # --- the end of a job --------------------------------------------------------------------------------

    @_per_job
    def _ended(self, sj: StepJob) -> None:
        e: Entry = sj.tag
        rid = request_id.set(e.job_id)
        try:
            if sj.error is not None:
                self._failed(e, sj.error, 0)
            else:
                self._succeeded(e, sj)
        except REDIS_ERRORS:
            self._drop(e)  # left pending: reclaimed once silent (fencing makes a late write harmless)
            raise
        finally:
            request_id.reset(rid)
            self.backend.free_memory()

    def _succeeded(self, e: Entry, sj: StepJob) -> None:
        t_denoised = time.time()
        pixels = self.backend.loop.decode(sj.latents, sj.job.geometry)
        png = encode_png(to_pil(pixels)[0])
        t_done = time.time()
        metrics.STEPS.inc(e.steps)
        metrics.STEPS_PER_SECOND.set(e.steps / max(t_denoised - e.encoded, 1e-9))
        stored = self.store.set_result(e.job_id, png)  # {result_blob: ref} with a blob store
        timings = {"queued_s": max(0.0, e.started - e.created_at), "encode_s": e.encoded - e.started,
                   "denoise_s": t_denoised - e.encoded, "decode_s": t_done - t_denoised,
                   "total_s": t_done - e.created_at}
        g = sj.job.geometry
        if not self.store.finish(e.job_id, e.token, "SUCCEEDED", fields={
                "width": g.width, "height": g.height, "seed": sj.job.seed, "timings": json.dumps(timings),
                **stored}):
            log.info("job taken over by another worker", extra={"job_id": e.job_id})
            payloads.release(self.store.blobs, stored, payloads.RESULT)
            self._drop(e)
            return
        self._ack(e)
        log.info("job succeeded", extra={"job_id": e.job_id, "timings": timings, "forwards": sj.forwards})

    def _failed(self, e: Entry, exc: BaseException, attempts: int) -> None:
        set_error(e.span, exc)
        if isinstance(exc, JobTakenOver):
            log.info("job taken over by another worker", extra={"job_id": e.job_id})
            self._drop(e)
        elif isinstance(exc, Cancelled):
            self.store.finish(e.job_id, e.token, "CANCELLED", "CANCELLED", str(exc))
            self._ack(e)
        elif isinstance(exc, PERMANENT):
            reason = str(exc)
            if isinstance(exc, DeadlineExceeded) and e.started:  # say which attempt ran when it passed
                reason = f"attempt {e.attempt} started at {_iso(e.started)}; {reason}"
            self.store.finish(e.job_id, e.token, "FAILED", exc.code, reason)
            self._ack(e)
        elif isinstance(exc, REDIS_ERRORS):
            self._drop(e)
        elif isinstance(exc, Exception):  # transient: left pending, retried on another delivery
            code = exc.code if isinstance(exc, LongCatError) else "INTERNAL"
            log.warning("job attempt failed; it will be retried", exc_info=exc if not isinstance(exc, LongCatError)
                        else None, extra={"job_id": e.job_id, "attempt": attempts, "error": str(exc)})
            # What the client reads: the kind of failure, not internal addresses (those are in the log).
            reason = PUBLIC_REASONS.get(code, f"internal error ({type(exc).__name__})")
            self.store.record_error(e.job_id, e.token, code, reason)
            self._drop(e)
        else:
            self._drop(e)
            raise exc

    def _ack(self, e: Entry) -> None:
        self.store.ack(e.entry_id, e.stream)
        self._drop(e)

    def _drop(self, e: Entry) -> None:
        """Stop heart-beating the entry (acknowledged, or left pending for another worker)."""
        with self._held_lock:
            self.held.pop(e.entry_id, None)
        end_span(e.span)
        e.span = None

    def _heartbeat(self, done: threading.Event) -> None:
        period = max(0.2, self.heartbeat_timeout_s / 5)
        while not done.wait(period):
            with self._held_lock:
                by_stream: dict[str, list[str]] = {}
                for e in self.held.values():
                    by_stream.setdefault(e.stream, []).append(e.entry_id)
            for stream, ids in by_stream.items():
                try:
                    self.store.heartbeat(self.consumer, ids, stream)
                except REDIS_ERRORS:
                    pass  # the main loop will notice; a missed beat only risks a reclaim, which fencing makes safe
