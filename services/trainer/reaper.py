"""Finds training jobs whose worker died (lease expired while the job is still RUNNING) and dispatches them
again; the next attempt resumes from the last checkpoint. Attempts are bounded by the job's claim."""

from __future__ import annotations

import logging
import threading

from longcat.jobs.connection import REDIS_ERRORS
from longcat.jobs.store import JobStore, as_str

log = logging.getLogger("longcat.trainer.reaper")


def reap_once(store: JobStore, dispatch) -> list[str]:
    """One pass (guarded so only one worker reaps at a time). Returns the job ids dispatched again."""
    k = store.k
    if not store.r.set(k.lock("train-reaper"), "1", nx=True, px=5000):
        return []
    again = []
    for raw in store.r.smembers(k.train_active):
        job_id = as_str(raw)
        view = store.get(job_id)
        if view is None or view.terminal:
            store.r.srem(k.train_active, job_id)
            continue
        if view.state == "RUNNING" and not store.r.exists(k.train_lease(job_id)) and \
                store.r.set(k.lock(f"redispatch:{job_id}:{view.attempts}:{view.extra.get('pauses', 0)}"), "1",
                            nx=True, ex=3600):
            log.warning("training job lost its worker; dispatching it again",
                        extra={"job_id": job_id, "attempts": view.attempts})
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
