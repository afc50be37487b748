"""Celery's own lines about a running task (a task that raised, a retry) carry the job id and tenant, like
every other line of a training job (longcat.logs): the task's thread is in the job's context from Celery's
prerun to its postrun signal, which come after and before those lines."""

from __future__ import annotations

import re

from longcat.jobs.connection import REDIS_ERRORS
from longcat.jobs.store import JobStore
from longcat.logs import job_context

_JOB_ID = re.compile(r"[0-9a-f]{32}")


def install(store: JobStore) -> None:
    from celery.signals import task_postrun, task_prerun

    scopes: dict[str, object] = {}

    @task_prerun.connect(weak=False)
    def enter(task_id=None, args=None, **_):
        job = str(args[0]) if args else ""
        if not _JOB_ID.fullmatch(job):
            return
        try:
            view = store.get(job)
        except REDIS_ERRORS:
            view = None  # the job's own code reports Redis trouble; its lines still name the job
        scopes[task_id] = scope = job_context(job, view.owner if view else None)
        scope.__enter__()

    @task_postrun.connect(weak=False)
    def leave(task_id=None, **_):
        scope = scopes.pop(task_id, None)
        if scope is not None:
            scope.__exit__(None, None, None)
