"""Redis URLs lose their password in every log line (longcat.redact, installed by longcat.logs.setup_logging)."""

from __future__ import annotations

import json
import logging

import pytest

from longcat.logs import setup_logging
from longcat.redact import redact_text, redact_url

SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize("url, expected", [
    (f"redis://:{SECRET}@redis:6379/0", "redis://:***@redis:6379/0"),
    (f"rediss://default:{SECRET}@redis.example.net:6380/1", "rediss://default:***@redis.example.net:6380/1"),
    ("redis://redis:6379/0", "redis://redis:6379/0"),                     # nothing to hide
    ("redis://user@redis:6379/0", "redis://user@redis:6379/0"),           # a user name alone is no secret
    (f"redis://:{SECRET}@[::1]:6379/0", "redis://:***@[::1]:6379/0"),
])
def test_redact_url(url, expected):
    assert redact_url(url) == expected


def test_redact_text_finds_urls_inside_a_message():
    text = f"Error connecting to redis://:{SECRET}@redis:6379/0 and amqp://guest:{SECRET}@mq//; retrying"
    out = redact_text(text)
    assert SECRET not in out and "redis://:***@redis:6379/0" in out and "amqp://guest:***@mq//" in out
    assert redact_text("no url here: a:b@c") == "no url here: a:b@c"


def lines(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_every_log_line_is_redacted(capsys):
    """The message, %-args, `extra` fields (nested too) and exception text of a record, through the handler
    that setup_logging installs: the same path every service's lines take."""
    url = f"redis://:{SECRET}@redis:6379/0"
    setup_logging("INFO")
    try:
        log = logging.getLogger("longcat.test.redact")
        log.info("gateway up", extra={"redis": url, "nested": {"urls": [url]}})
        log.warning("cannot reach %s", url)
        try:
            raise ConnectionError(f"Error 111 connecting to {url}")
        except ConnectionError:
            log.exception("redis down")
        got = lines(capsys)
    finally:
        logging.getLogger().handlers[:] = []
    assert len(got) == 3
    assert SECRET not in json.dumps(got)
    assert got[0]["redis"] == "redis://:***@redis:6379/0" and got[0]["nested"] == {"urls": [got[0]["redis"]]}
    assert got[1]["msg"] == "cannot reach redis://:***@redis:6379/0"
    assert "connecting to redis://:***@redis:6379/0" in got[2]["exc"]


def test_without_the_filter_the_secret_would_show(capsys):
    """Control: the same record through a bare handler carries the password (the test above can fail)."""
    setup_logging("INFO")
    try:
        for h in logging.getLogger().handlers:
            h.filters.clear()
        logging.getLogger("longcat.test.redact").info("up", extra={"redis": f"redis://:{SECRET}@redis:6379/0"})
        assert SECRET in capsys.readouterr().err
    finally:
        logging.getLogger().handlers[:] = []
