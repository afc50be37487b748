"""Redis connections that reconnect with backoff, and one translation of Redis failures to UNAVAILABLE."""

from __future__ import annotations

import contextlib
import os

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from longcat.errors import Unavailable
from longcat.jobs.redis_url import make_client

DEFAULT_URL = "redis://127.0.0.1:6379/0"
# ReadOnlyError: a write that reached a node being demoted during a failover (a switch, not a bug).
REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.ReadOnlyError)


def redis_url(url: str | None = None) -> str:
    return url or os.environ.get("LONGCAT_REDIS_URL") or DEFAULT_URL


def connect(url: str | None = None, socket_timeout: float = 5.0, max_connections: int | None = None) -> redis.Redis:
    """A client that retries a few times with backoff, then fails fast (callers answer UNAVAILABLE). A
    ``redis+sentinel://`` URL gives a client that asks the Sentinels for the primary on every reconnect.
    ``max_connections``: the pool's size (redis-py's default, 100, is too few for a process with more threads
    that each may hold one: beyond it a call fails with "Too many connections")."""
    return make_client(
        redis_url(url),
        socket_timeout=socket_timeout,
        socket_connect_timeout=2.0,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
        retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
        health_check_interval=15,
        **({"max_connections": max_connections} if max_connections else {}),
    )


@contextlib.contextmanager
def redis_unavailable_as_error(what: str = "the job queue (Redis)"):
    try:
        yield
    except REDIS_ERRORS as exc:
        raise Unavailable(f"{what} is unreachable: {exc}") from exc
