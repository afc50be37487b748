"""Finds training jobs whose worker died (lease expired while the job is still RUNNING) and dispatches them
again; the next attempt resumes from the last checkpoint. Attempts are bounded by the job's claim.

Also finds QUEUED training jobs that no Celery message carries any more (a Redis failover lost the message, or
its task failed on the switch before the job was marked active) and dispatches them again."""

from __future__ import annotations

import logging
import threading
import time

from longcat.jobs.connection import REDIS_ERRORS
from longcat.jobs.store import JobStore
from longcat.logs import job_context

log = logging.getLogger("longcat.trainer.reaper")


def reap_once(store: JobStore, dispatch, lock_ms: int = 5000, waiting=None, orphan_grace_s: float = 10.0) -> list[str]:
    """One pass (guarded so only one worker reaps at a time). Returns the job ids dispatched again.
    ``waiting``: () -> the job ids whose messages wait in the broker; given, queued jobs with none are found too."""
    if not store.try_lock("train-reaper", lock_ms):
        return []
    again = []
    for job_id in store.active_training_jobs():
        view = store.get(job_id)
        if view is None or view.terminal:
            store.unmark_active(job_id)
            continue
        # QUEUED while marked active: a worker took it, then a Redis failover lost its claim (the promoted
        # replica never got it); that worker stopped when its lease did not extend. Dispatch it again too.
        if view.state in ("RUNNING", "QUEUED") and not store.lease_held(job_id) and \
                store.try_lock(f"redispatch:{job_id}:{view.attempts}:{view.extra.get('pauses', 0)}", 3600_000):
            with job_context(job_id, view.owner):  # its lines name the job and tenant (longcat.logs)
                log.warning("training job lost its worker; dispatching it again", extra={"attempts": view.attempts})
                store.add_event(job_id, {"kind": "message", "state": "RUNNING",
                                         "message": "its worker stopped; resuming from the last checkpoint"})
                dispatch(job_id)
            again.append(job_id)
    if waiting is not None:
        again += requeue_orphans(store, dispatch, waiting, orphan_grace_s)
    return again


def requeue_orphans(store: JobStore, dispatch, waiting, grace_s: float) -> list[str]:
    """QUEUED training jobs that no worker holds (not active, no lease) and no broker message carries: the
    message was published to, or taken from, a primary that a failover then lost, so nothing would ever run
    them. Only jobs older than ``grace_s`` (a just-submitted job's message may be on its way), at most once per
    ``grace_s`` each; a message that turns out to be a duplicate is harmless (the lease and claim fence it)."""
    queued = store.queued_training_jobs()
    if not queued:
        return []
    in_broker = waiting()  # read before the per-job checks: a message taken meanwhile shows as active/leased
    again = []
    for job_id in queued:
        if job_id in in_broker or store.is_active(job_id) or store.lease_held(job_id):
            continue
        view = store.get(job_id)
        if view is None or view.state != "QUEUED" or time.time() - view.created_at < grace_s:
            continue
        if store.try_lock(f"requeue:{job_id}", int(grace_s * 1000)):
            log.warning("training job queued with no broker message (lost in a Redis failover); dispatching it "
                        "again", extra={"job_id": job_id})
            dispatch(job_id)
            again.append(job_id)
    return again


def take_back_own_jobs(store: JobStore, consumer: str, dispatch) -> list[str]:
    """At start: leases still held under this trainer's (stable) name belong to its previous, dead run (a live
    one would hold another name). Drop them and dispatch their jobs now, instead of waiting for them to expire
    and the reaper to notice; the next attempt resumes from the last checkpoint, and fencing stays with claims."""
    again = []
    try:
        for job_id in store.active_training_jobs():
            if store.drop_lease_of(job_id, f"{consumer}:"):
                log.warning("resuming a training job this trainer held before it restarted", extra={"job_id": job_id})
                store.add_event(job_id, {"kind": "message", "state": "RUNNING",
                                         "message": "its worker restarted; resuming from the last checkpoint"})
                dispatch(job_id)
                again.append(job_id)
    except REDIS_ERRORS as exc:
        log.warning("could not look for this trainer's own jobs; the reaper will find them", extra={"error": str(exc)})
    return again


def run_reaper(store: JobStore, dispatch, stop: threading.Event, period_s: float, waiting=None,
               orphan_grace_s: float = 10.0) -> None:
    # The pass lock lives a little less than a period, so some trainer reaps every period (not every 5 s).
    lock_ms = max(200, int(period_s * 800))
    while not stop.wait(period_s):
        try:
            reap_once(store, dispatch, lock_ms, waiting, orphan_grace_s)
        except REDIS_ERRORS as exc:
            log.warning("reaper: redis unreachable", extra={"error": str(exc)})
        except Exception:  # noqa: BLE001
            log.exception("reaper pass failed")
