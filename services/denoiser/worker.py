"""The denoiser's edit worker: consumes edit jobs from the Redis stream with a consumer group.

Claims a job (fenced by a per-attempt token), asks the encoder service for embeddings over gRPC, runs the
shared denoise loop with per-step events and cancellation, stores the PNG, finishes and acknowledges.
A killed worker leaves its entry pending; once it stops heart-beating, another worker reclaims it. After
``max_attempts`` deliveries the job is FAILED with its last error (dead letter), never looped forever.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid

from longcat.api.edit import validate_request
from longcat.api.edit_proto import request_from_proto
from longcat.conditioning import to_pil
from longcat.engine.denoise import StepEvent
from longcat.engine.stage import StageRequest, run_denoise_stage
from longcat.errors import Cancelled, DeadlineExceeded, InvalidArgument, LongCatError, NotFound, Unavailable
from longcat.images import encode_png
from longcat.jobs.connection import REDIS_ERRORS
from longcat.jobs.store import JobStore
from longcat.logs import request_id
from longcat.rpc import metrics
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


class JobTakenOver(Exception):
    """Our claim on the job ended (another worker reclaimed it, or it finished): stop quietly."""


class EditWorker:
    def __init__(self, store: JobStore, backend: DenoiserBackend, encoder, heartbeat_timeout_s: float = 30.0,
                 max_attempts: int = 3, block_ms: int = 1000, name: str | None = None,
                 encoder_timeout_s: float = 60.0):
        self.store = store
        self.backend = backend
        self.encoder = encoder
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.max_attempts = max_attempts
        self.encoder_timeout_s = encoder_timeout_s  # an attempt waits this long for the encoder, then fails
        self.block_ms = block_ms
        self.consumer = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.stopping = threading.Event()
        self.idle = threading.Event()
        self.idle.set()

    # --- the loop ----------------------------------------------------------------------------------------

    def run_forever(self) -> None:
        backoff = 0.2
        next_reclaim = 0.0
        log.info("worker started", extra={"consumer": self.consumer})
        while not self.stopping.is_set():
            try:
                self.store.ensure_group()
                entries = []
                if time.monotonic() >= next_reclaim:  # dead workers' jobs first: they waited longest
                    entries = self.store.reclaim_stale(self.consumer, int(self.heartbeat_timeout_s * 1000))
                    next_reclaim = time.monotonic() + max(0.5, self.heartbeat_timeout_s / 4)
                if not entries:
                    entries = self.store.read_new(self.consumer, self.block_ms)
                for entry_id, job_id in entries:
                    self.process(entry_id, job_id)
                backoff = 0.2
            except REDIS_ERRORS as exc:
                log.warning("redis unreachable; retrying", extra={"error": str(exc), "retry_in_s": backoff})
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 10.0)
            except Exception:  # noqa: BLE001 - a worker never dies of one bad job
                log.exception("worker loop error")
                self.stopping.wait(1.0)
        log.info("worker stopped", extra={"consumer": self.consumer})

    def stop(self) -> None:
        self.stopping.set()

    # --- one job -----------------------------------------------------------------------------------------

    def process(self, entry_id: str, job_id: str) -> None:
        token = f"{self.consumer}:{uuid.uuid4().hex[:8]}"
        outcome, attempts = self.store.claim(job_id, token, self.max_attempts)
        if outcome != "RUNNING":  # cancelled while queued, expired, dead-lettered, or already done
            log.info("job not run", extra={"job_id": job_id, "outcome": outcome, "attempts": attempts})
            self.store.ack(entry_id)
            return
        self.idle.clear()
        beat = threading.Event()
        heart = threading.Thread(target=self._heartbeat, args=(entry_id, beat), daemon=True)
        heart.start()
        rid = request_id.set(job_id)
        try:
            self._run(job_id, token)
            self.store.ack(entry_id)
        except JobTakenOver:
            log.info("job taken over by another worker", extra={"job_id": job_id})
        except Cancelled as exc:
            self.store.finish(job_id, token, "CANCELLED", "CANCELLED", str(exc))
            self.store.ack(entry_id)
        except PERMANENT as exc:
            self.store.finish(job_id, token, "FAILED", exc.code, str(exc))
            self.store.ack(entry_id)
        except REDIS_ERRORS:
            raise  # the loop backs off; the entry stays pending and is reclaimed
        except Exception as exc:  # noqa: BLE001 - transient: left pending, retried on another delivery
            code = exc.code if isinstance(exc, LongCatError) else "INTERNAL"
            log.warning("job attempt failed; it will be retried", exc_info=not isinstance(exc, LongCatError),
                        extra={"job_id": job_id, "attempt": attempts, "error": str(exc)})
            # What the client reads: the kind of failure, not internal addresses (those are in the log).
            reason = PUBLIC_REASONS.get(code, f"internal error ({type(exc).__name__})")
            self.store.record_error(job_id, token, code, reason)
        finally:
            beat.set()
            heart.join()
            request_id.reset(rid)
            self.backend.free_memory()
            self.idle.set()

    def _heartbeat(self, entry_id: str, done: threading.Event) -> None:
        period = max(0.2, self.heartbeat_timeout_s / 5)
        while not done.wait(period):
            try:
                self.store.heartbeat(self.consumer, entry_id)
            except REDIS_ERRORS:
                pass  # the main loop will notice; a missed beat only risks a reclaim, which fencing makes safe

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
                raise DeadlineExceeded("its deadline passed while it was running") from None
            # Our own wait ran out, not the client's deadline: the encoder is down, retry on another delivery.
            raise Unavailable("the encoder service was unreachable") from None

    def _run(self, job_id: str, token: str) -> None:
        view = self.store.get(job_id)
        raw = self.store.request_bytes(job_id)
        if view is None or raw is None:
            raise NotFound("the job's request expired before it ran", "job_id")
        msg = edit_pb2.EditRequest.FromString(raw)
        req = validate_request(request_from_proto(msg, self.backend.defaults), self.backend.limits)
        self.backend.gate.check(req.speed_preset, [a.name for a in req.adapters])  # before any work
        started = time.time()
        deadline = view.deadline

        enc = self._encode(req, msg, job_id, deadline)
        t_encoded = time.time()
        cancel = threading.Event()

        def on_step(ev: StepEvent) -> None:
            event = {"kind": "progress", "state": "RUNNING", "step": ev.step, "total": ev.total,
                     "elapsed_s": ev.elapsed_s, "eta_s": ev.eta_s}
            if ev.preview is not None:
                event["preview_png"] = encode_png(to_pil(ev.preview)[0])
            if not self.store.progress(job_id, token, event):
                raise JobTakenOver()
            if self.store.cancel_requested(job_id):
                cancel.set()
            if deadline and time.time() > deadline:
                raise DeadlineExceeded("its deadline passed while it was running")

        stage = run_denoise_stage(self.backend.loop, self.backend.adapters, StageRequest(
            enc.prompt_embeds, enc.negative_embeds, req.geometry, req.num_inference_steps, req.guidance_scale,
            req.seed, image=req.image, adapters=[(a.name, a.scale) for a in req.adapters],
            speed_preset=req.speed_preset),
            on_step=on_step, cancel=cancel, preview_every=max(0, msg.preview_every))
        t_denoised = time.time() - stage.timings["decode_s"]
        png = encode_png(to_pil(stage.pixels)[0])
        t_done = time.time()
        metrics.STEPS.inc(req.num_inference_steps)
        metrics.STEPS_PER_SECOND.set(req.num_inference_steps / max(t_denoised - t_encoded, 1e-9))
        self.store.set_result(job_id, png)
        timings = {"queued_s": max(0.0, started - view.created_at), "encode_s": t_encoded - started,
                   "denoise_s": t_denoised - t_encoded, "decode_s": t_done - t_denoised,
                   "total_s": t_done - view.created_at}
        if not self.store.finish(job_id, token, "SUCCEEDED", fields={
                "width": req.geometry.width, "height": req.geometry.height, "seed": req.seed,
                "timings": json.dumps(timings)}):
            raise JobTakenOver()
        log.info("job succeeded", extra={"job_id": job_id, "timings": timings})
