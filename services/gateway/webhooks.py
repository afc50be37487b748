"""Webhooks: a job submitted with a ``callback_url`` gets its terminal event (and, when asked, its progress)
POSTed there as JSON, signed ``X-LongCat-Signature: sha256=<HMAC-SHA256(caller's API key, body)>``.

Delivery runs on its own thread per job, following the job's event stream like any watcher: it never blocks
the job or the request that submitted it. A failed POST (connection error, timeout, 5xx, 429) is retried
with exponential backoff, then dropped with a log line. Only hosts on the operator's allow-list
(``--callback-hosts``) are called, and redirects are not followed, so a caller cannot make the gateway
request arbitrary internal addresses."""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from typing import Callable
from urllib.parse import urlsplit

from longcat.errors import InvalidArgument
from longcat.jobs.store import JobStore
from services.gateway.events import watch
from services.gateway.http.views import event_json

log = logging.getLogger("longcat.gateway.webhooks")
SIGNATURE = "X-LongCat-Signature"
TERMINAL_KINDS = ("result", "state")


def sign(key: str, body: bytes) -> str:
    return "sha256=" + hmac.new(key.encode(), body, hashlib.sha256).hexdigest()


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # a 3xx is an answer, not an instruction to call another host


class Webhooks:
    def __init__(self, store: JobStore, allowed_hosts: tuple[str, ...] | list[str] = (), timeout_s: float = 5.0,
                 attempts: int = 5, backoff_s: float = 0.5):
        self.store = store
        self.allowed = {h.strip().lower() for h in allowed_hosts if h.strip()}
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.stopping = threading.Event()
        self._opener = urllib.request.build_opener(_NoRedirects)

    @classmethod
    def from_flag(cls, store: JobStore, hosts: str, **kw) -> "Webhooks":
        return cls(store, [h for h in hosts.split(",") if h.strip()], **kw)

    def check(self, url: str, field: str = "callback_url") -> str:
        """Refuse, at submission, a URL the gateway would not call (naming ``field``)."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise InvalidArgument(f"{url!r} is not a URL: {exc}", field) from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidArgument(f"{url!r} is not an http(s) URL", field)
        if not self.allowed:
            raise InvalidArgument("this gateway calls no webhooks (its operator sets --callback-hosts)", field)
        host = parts.hostname.lower()
        if host not in self.allowed and f"{host}:{port}" not in self.allowed:
            raise InvalidArgument(f"host {parts.netloc!r} is not on this gateway's webhook allow-list", field)
        return url

    def follow(self, job_id: str, url: str, key: str, progress: bool = False) -> threading.Thread:
        # In the submitting call's context: its log lines carry the job id and tenant (longcat.logs).
        t = threading.Thread(target=contextvars.copy_context().run, args=(self._follow, job_id, url, key, progress),
                             name=f"webhook-{job_id}", daemon=True)
        t.start()
        return t

    def _follow(self, job_id: str, url: str, key: str, progress: bool) -> None:
        try:
            for ev in watch(self.store, job_id, "0", lambda: not self.stopping.is_set()):
                body = event_json(ev)
                if body["kind"] in TERMINAL_KINDS and ev.HasField("job"):
                    self.deliver(url, key, body)
                    return
                if progress and body["kind"] != "queued":
                    self.deliver(url, key, body)
        except Exception:  # noqa: BLE001 - a webhook never takes the gateway down
            log.exception("webhook follower failed", extra={"job_id": job_id})

    def deliver(self, url: str, key: str, event: dict, sleep: Callable[[float], None] = time.sleep) -> bool:
        """POST one event; retried with backoff; True when the receiver answered 2xx."""
        body = json.dumps(event, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", SIGNATURE: sign(key, body), "User-Agent": "longcat-webhook",
                   "X-LongCat-Event": event.get("kind", ""), "X-LongCat-Job": event.get("job_id", "")}
        for attempt in range(self.attempts):
            status = 0
            try:
                req = urllib.request.Request(url, data=body, headers=headers, method="POST")
                with self._opener.open(req, timeout=self.timeout_s) as resp:
                    status = resp.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            except (OSError, ValueError) as exc:
                log.info("webhook not delivered", extra={"url": url, "attempt": attempt + 1, "error": str(exc)})
            if 200 <= status < 300:
                return True
            if status and status < 500 and status != 429:  # the receiver refused it: retrying will not help
                log.warning("webhook refused", extra={"url": url, "status": status})
                return False
            if attempt + 1 < self.attempts and not self.stopping.is_set():
                sleep(self.backoff_s * (2 ** attempt))
        log.warning("webhook dropped after retries", extra={"url": url, "attempts": self.attempts})
        return False
