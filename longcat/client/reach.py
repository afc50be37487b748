"""Telling "no gateway there at all" from "the gateway is restarting", so the first fails at once.

gRPC reports both as UNAVAILABLE. A client that has never reached the gateway and finds nothing listening
on its address (connection refused, or a name that does not resolve) gets one clear error naming what to do
instead of seconds of silent retries; a gateway that answered before and drops is retried with backoff.
"""

from __future__ import annotations

import socket

from longcat.errors import Unavailable


def no_gateway(address: str) -> Unavailable:
    return Unavailable(f"no LongCat gateway at {address}; start one with `longcat up` or set LONGCAT_GATEWAY")


def nothing_listening(address: str, timeout_s: float = 1.0) -> bool:
    """True when a TCP connection to ``HOST:PORT`` is refused or the host does not resolve. Unix sockets and
    other targets gRPC understands are never judged here (False: the normal retries apply)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address or address.startswith("unix:"):
        return False
    host = host.strip("[]") or "127.0.0.1"
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return False
    except (ConnectionRefusedError, socket.gaierror):
        return True
    except OSError:  # a timeout or an unreachable route: let gRPC's own retries decide
        return False


def is_connect_failure(details: str | None) -> bool:
    """gRPC's text for a connection that could not be made (its raw form is not for users)."""
    text = (details or "").lower()
    return "failed to connect" in text or "connection refused" in text or "dns resolution failed" in text
