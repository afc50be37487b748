"""Client-side helpers for the HTTP door's tests and bench: Server-Sent Events read with httpx, and a local
webhook receiver on loopback."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx


def sse_events(client: httpx.Client, url: str, headers: dict | None = None, timeout: float = 300.0,
               until=None) -> list[dict]:
    """The ``data:`` JSON of each event (with its ``id:`` as ``_id``) until the stream ends or ``until(ev)``."""
    out, current = [], {}
    with client.stream("GET", url, headers=headers or {}, timeout=timeout) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line.startswith("id:"):
                current["_id"] = line[3:].strip()
            elif line.startswith("data:"):
                current.update(json.loads(line[5:]))
            elif line == "" and current:
                out.append(current)
                if until is not None and until(current):
                    break
                current = {}
    return out


class Receiver:
    """A webhook receiver on 127.0.0.1: records (headers, body) of each POST; the first ``fail_first``
    answers are 500 (to see retries)."""

    def __init__(self, fail_first: int = 0):
        self.calls: list[tuple[dict, bytes]] = []
        self.fail_first = fail_first
        self.got = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.got:
                    receiver.calls.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    status = 500 if len(receiver.calls) <= receiver.fail_first else 200
                    receiver.got.notify_all()
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, n: int, timeout: float, until=None) -> list[tuple[dict, bytes]]:
        """The calls once there are ``n`` (or once ``until(calls)`` is true)."""
        done = until or (lambda calls: len(calls) >= n)
        with self.got:
            assert self.got.wait_for(lambda: done(self.calls), timeout), f"got {len(self.calls)} calls"
            return list(self.calls)

    def close(self):
        self.server.shutdown()
        self.server.server_close()
