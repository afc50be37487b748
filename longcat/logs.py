"""Structured (one JSON object per line) logging for services and the CLI."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from contextlib import contextmanager
from contextvars import ContextVar

from longcat.redact import RedactingFilter

# The id of the request being handled on this thread/task; every log line carries it.
request_id: ContextVar[str] = ContextVar("request_id", default="")
# The job being handled on this thread/task and its tenant (owner): every line logged while a service works on
# a job carries both, so an operator greps one job (or one tenant) across gateway, denoiser, encoder, trainer.
job_id: ContextVar[str] = ContextVar("job_id", default="")
tenant: ContextVar[str] = ContextVar("tenant", default="")
_CONTEXT = (("request_id", request_id), ("job_id", job_id), ("tenant", tenant))


@contextmanager
def job_context(job: str | None = None, owner: str | None = None):
    """Within the block, log lines carry ``job_id`` / ``tenant`` (None leaves one as it is)."""
    tokens = [(var, var.set(value)) for var, value in ((job_id, job), (tenant, owner)) if value is not None]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


@contextmanager
def log_scope():
    """A request's scope (an RPC handler): what :func:`bind_job` sets inside is undone at the end."""
    tokens = [(var, var.set(var.get())) for var in (job_id, tenant)]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            try:
                var.reset(token)
            except ValueError:  # a streaming handler closed from another thread (garbage collected): no-op
                pass


def bind_job(job: str | None = None, owner: str | None = None) -> None:
    """Tag the rest of the current scope (see :func:`log_scope`) with a job / tenant learnt mid-request, e.g. the
    job id a submission just created: the RPC's own closing line then carries it too."""
    if job is not None:
        job_id.set(job)
    if owner is not None:
        tenant.set(owner)


def context_fields() -> dict[str, str]:
    """The request id, job id and tenant of this thread/task (the set ones)."""
    return {name: value for name, var in _CONTEXT if (value := var.get())}
_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(context_fields())
        out.update({k: v for k, v in vars(record).items() if k not in _RESERVED and not k.startswith("_")})
        if record.exc_info:
            out["exc"] = record.exc_text or self.formatException(record.exc_info)  # exc_text: redacted
        return json.dumps(out, default=str)


def setup_logging(level: str | None = None, json_format: bool | None = None, default_level: str = "INFO") -> None:
    """Configure the root logger once.

    Level: ``level`` if given, else ``LONGCAT_LOG_LEVEL``, else ``default_level``. Format: ``json_format`` if
    given, else ``LONGCAT_LOG_FORMAT`` (``json`` / ``plain``), else plain readable lines on a terminal and
    JSON lines anywhere else (log files, pipes, log collectors)."""
    level = (level or os.environ.get("LONGCAT_LOG_LEVEL") or default_level).upper()
    if logging.getLevelName(level) == f"Level {level}":
        level = default_level.upper()  # an unknown name must not crash a service at start
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if _want_json(json_format, sys.stderr) else PlainFormatter())
    handler.addFilter(RedactingFilter())  # no URL password in any line (longcat.redact)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    from longcat.quiet import silence_libraries

    silence_libraries(logging.getLevelName(level))


def _want_json(json_format: bool | None, stream) -> bool:
    if json_format is not None:
        return json_format
    chosen = os.environ.get("LONGCAT_LOG_FORMAT", "").lower()
    if chosen in ("json", "plain"):
        return chosen == "json"
    return not (hasattr(stream, "isatty") and stream.isatty())


class PlainFormatter(logging.Formatter):
    """``12:00:01 INFO  gateway up  port=50051``: for people reading a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        extras = {**context_fields(),
                  **{k: v for k, v in vars(record).items() if k not in _RESERVED and not k.startswith("_")}}
        line = (time.strftime("%H:%M:%S", time.localtime(record.created)) + f" {record.levelname:<7s} "
                + record.getMessage())
        if extras:
            line += "  " + " ".join(f"{k}={v}" for k, v in extras.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line
