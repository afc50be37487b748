"""The Celery app for training jobs, configured for long GPU jobs (the trainer consumes it; the gateway only
sends tasks to it, so it lives here, shared, and Celery is imported only when it is made).

- One job per worker at a time, no prefetch: a worker never holds a job it is not running.
- Late ack + reject on worker loss: a job whose worker process dies goes back to the queue.
- ``threads`` pool: tasks run in the worker process itself, never in a fork, so CUDA (and gRPC) are
  initialised once in the process that uses them (the CUDA-in-forked-worker trap cannot happen).
- The broker's visibility timeout is far longer than any job, so Redis never re-delivers a job that is
  still running; a worker that died entirely is detected by its expired job lease instead
  (``reaper.py``), and a lease makes a second concurrent run impossible even if a message came twice.
"""

from __future__ import annotations

QUEUE = "longcat.training"
TASK = "longcat.train"


def make_app(redis_url: str, visibility_timeout_s: int = 7 * 24 * 3600):
    """``redis_url`` is the stack's URL (plain or ``redis+sentinel://``): the broker follows a failover through
    kombu's ``sentinel://`` transport. Results are not kept in Celery (job state lives in the job store); were a
    result backend configured, it would take the same URL and ``result_backend_transport_options``."""
    from celery import Celery  # the [train] extra

    from longcat.jobs.redis_url import celery_broker

    broker_url, transport = celery_broker(redis_url)
    app = Celery("longcat-trainer", broker=broker_url)
    app.conf.update(
        task_default_queue=QUEUE,
        task_routes={TASK: {"queue": QUEUE}},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        worker_pool="threads",
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": visibility_timeout_s, **transport},
        result_backend_transport_options=dict(transport),
        task_serializer="json",
        accept_content=["json"],
    )
    return app


# kombu's Redis transport keeps a queue's waiting messages in lists: the queue's name for the default priority,
# ``name + "\x06\x16" + step`` for the other priority steps (kombu.transport.redis.Channel).
_PRIORITY_SEP, _PRIORITY_STEPS = "\x06\x16", (3, 6, 9)


def waiting_job_ids(client) -> set[str]:
    """The job ids of the training tasks waiting in the broker (not yet taken by a worker). ``client`` is a
    redis-py client on the broker's Redis (the stack's: the job store's client)."""
    out: set[str] = set()
    for key in [QUEUE] + [f"{QUEUE}{_PRIORITY_SEP}{step}" for step in _PRIORITY_STEPS]:
        for raw in client.lrange(key, 0, -1):
            job_id = _job_id_of(raw)
            if job_id:
                out.add(job_id)
    return out


def _job_id_of(raw: bytes) -> str:
    """The job id a kombu message carries (task protocol 2: the body is ``[args, kwargs, embed]``)."""
    import base64
    import json

    try:
        message = json.loads(raw)
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return str(args[0]) if args else ""
    except (ValueError, KeyError, IndexError, TypeError):
        return ""
