"""Structured (one JSON object per line) logging for services and the CLI."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from contextvars import ContextVar

from longcat.redact import RedactingFilter

# The id of the request being handled on this thread/task; every log line carries it.
request_id: ContextVar[str] = ContextVar("request_id", default="")
_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id.get()
        if rid:
            out["request_id"] = rid
        out.update({k: v for k, v in vars(record).items() if k not in _RESERVED and not k.startswith("_")})
        if record.exc_info:
            out["exc"] = record.exc_text or self.formatException(record.exc_info)  # exc_text: redacted
        return json.dumps(out, default=str)


def setup_logging(level: str | None = None, json_format: bool = True) -> None:
    """Configure the root logger once; ``LONGCAT_LOG_LEVEL`` overrides the default level."""
    level = (level or os.environ.get("LONGCAT_LOG_LEVEL") or "INFO").upper()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_format else logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())  # no URL password in any line (longcat.redact)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
