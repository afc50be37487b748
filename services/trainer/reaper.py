"""Finds training jobs whose worker died (lease expired while the job is still RUNNING) and dispatches them
again; the next attempt resumes from the last checkpoint. Attempts are bounded by the job's claim."""

from __future__ import annotations

import logging
import threading

from longcat.jobs.connection import REDIS_ERRORS
from longcat.jobs.store import JobStore
from longcat.logs import job_context

log = logging.getLogger("longcat.trainer.reaper")


def reap_once(store: JobStore, dispatch) -> list[str]:
    """One pass (guarded so only one worker reaps at a time). Returns the job ids dispatched again."""
    if not store.try_lock("train-reaper", 5000):
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
    return again


def run_reaper(store: JobStore, dispatch, stop: threading.Event, period_s: float) -> None:
    while not stop.wait(period_s):
        try:
            reap_once(store, dispatch)
        except REDIS_ERRORS as exc:
            log.warning("reaper: redis unreachable", extra={"error": str(exc)})
        except Exception:  # noqa: BLE001
            log.exception("reaper pass failed")
