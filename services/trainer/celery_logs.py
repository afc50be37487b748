"""Celery's own per-task log lines ("Task ... received", "... succeeded in ...") carry the job id and tenant,
like every other line of a training job (longcat.logs)."""

from __future__ import annotations

import logging
import re

from longcat.jobs.store import JobStore, as_str
from longcat.logs import job_context

_JOB_ID = re.compile(r"[0-9a-f]{32}")


class ReceivedJobFields(logging.Filter):
    """On the consumer thread's "received" line: the job id from the task's arguments, its owner from the
    store (one read per task received)."""

    def __init__(self, store: JobStore):
        super().__init__()
        self.store = store

    def filter(self, record: logging.LogRecord) -> bool:
        data = getattr(record, "data", None)
        found = _JOB_ID.search(str(data.get("args", ""))) if isinstance(data, dict) else None
        if found and not hasattr(record, "job_id"):
            record.job_id = found.group()
            try:
                record.tenant = as_str(self.store.r.hget(self.store.k.job(record.job_id), "owner") or b"")
            except Exception:  # noqa: BLE001 - a log line never fails on a Redis hiccup
                pass
        return True


def install(store: JobStore) -> None:
    from celery.signals import task_postrun, task_prerun

    logging.getLogger("celery.worker.strategy").addFilter(ReceivedJobFields(store))
    scopes: dict[str, object] = {}

    @task_prerun.connect(weak=False)
    def enter(task_id=None, args=None, **_):
        job = str(args[0]) if args else ""
        if _JOB_ID.fullmatch(job):
            view = store.get(job)
            scopes[task_id] = scope = job_context(job, view.owner if view else None)
            scope.__enter__()

    @task_postrun.connect(weak=False)
    def leave(task_id=None, **_):
        scope = scopes.pop(task_id, None)
        if scope is not None:
            scope.__exit__(None, None, None)
