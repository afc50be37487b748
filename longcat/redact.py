"""Keep credentials out of logs: a URL's password (``redis://:SECRET@host``) becomes ``***``.

``redact_url`` is for the places that print a URL on purpose (the services' "up" lines, ``longcat up``);
``RedactingFilter`` sits on the log handler (longcat.logs.setup_logging) and scrubs every line, so a URL that
reaches a log through a library's message or an exception text is redacted as well.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
# scheme://[user][:password]@host: the userinfo part of any URL inside a longer text
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/?#@\s]*):(?P<password>[^@/?#\s]*)@")


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (the user name is kept: it identifies, it does not
    authenticate); a URL without a password comes back unchanged."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # not parseable as a URL: scrub it as text
        return redact_text(url)
    if not password:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:{MASK}@{host}"))


def redact_text(text: str) -> str:
    """Every ``scheme://user:password@`` in a text, with the password replaced by ``***``."""
    if "://" not in text:
        return text
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)


def _scrub(value):
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_scrub(v) for v in value)
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    return value


class RedactingFilter(logging.Filter):
    """A handler filter: the message, its arguments, ``extra`` fields and exception text lose URL passwords."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_text(message)
        if clean != message:  # freeze the redacted message: args could hold the secret in any form
            record.msg, record.args = clean, None
        for key, value in list(vars(record).items()):
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                setattr(record, key, _scrub(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        return True


_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
