"""Identifiers and cursors a client sends back: job ids, event ids (Redis stream ids), idempotency keys and
callback URLs. Checked before they reach a Redis key or command, so ``<id>:request`` can never name another
key and a malformed cursor is the caller's INVALID_ARGUMENT, never the server's INTERNAL."""

from __future__ import annotations

import re

from longcat.api.bounds import shown
from longcat.errors import InvalidArgument, NotFound

# The store's ids: uuid4().hex. Anything else cannot name a job (no ':' can reach a Redis key).
JOB_ID_RE = re.compile(r"^[0-9a-f]{32}$")
# A Redis stream id: ms[-seq], each a uint64.
EVENT_ID_RE = re.compile(r"^([0-9]{1,20})(?:-([0-9]{1,20}))?$")
UINT64 = (1 << 64) - 1
MAX_REQUEST_ID_CHARS = 128
MAX_URL_CHARS = 2048


def check_job_id(job_id: str, field: str = "job_id") -> str:
    """A well-formed id that names no job reads as any unknown job: NOT_FOUND naming the field."""
    if not isinstance(job_id, str) or not JOB_ID_RE.match(job_id):
        raise NotFound(f"no job {shown(job_id)}", field)  # worded as for any unknown job: nothing leaks
    return job_id


def check_event_id(event_id: str, field: str = "after_event_id") -> str:
    """'' or '0' = from the start; else a stream id ``<ms>[-<seq>]`` this server handed out."""
    if not event_id:
        return "0"
    m = EVENT_ID_RE.match(event_id) if isinstance(event_id, str) else None
    if m is None or any(int(g) > UINT64 for g in m.groups() if g is not None):
        raise InvalidArgument(f"{shown(event_id)} is not an event id (\"<ms>-<seq>\", from a JobEvent)", field)
    return event_id


def check_request_id(request_id: str, field: str = "request_id") -> str:
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        raise InvalidArgument(f"is {len(request_id)} characters, over the limit of {MAX_REQUEST_ID_CHARS}", field)
    if any(ch < " " or ch == "\x7f" for ch in request_id):
        raise InvalidArgument(f"{shown(request_id)} has control characters", field)
    return request_id


def check_url_length(url: str, field: str = "callback_url") -> str:
    if len(url) > MAX_URL_CHARS:
        raise InvalidArgument(f"is {len(url)} characters, over the limit of {MAX_URL_CHARS}", field)
    return url
