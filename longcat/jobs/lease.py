"""A job lease: at most one worker runs a training job at a time, and a dead worker's lease expires.

``SET NX PX`` takes it; a heartbeat thread extends it while the job runs; release and extend only act on
our own token (a Lua check), so a worker that lost its lease can never extend or drop someone else's.
"""

from __future__ import annotations

import threading

import redis

from longcat.jobs.connection import REDIS_ERRORS

_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


_DROP_PREFIXED = """
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, string.len(ARGV[1])) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def drop_if_prefixed(client: redis.Redis, key: str, prefix: str) -> bool:
    """Delete a lease whose token starts with ``prefix`` (atomic: a lease another worker took meanwhile stays)."""
    return bool(client.eval(_DROP_PREFIXED, 1, key, prefix))


class Lease:
    def __init__(self, client: redis.Redis, key: str, token: str, ttl_s: float):
        self.r = client
        self.key = key
        self.token = token
        self.ttl_ms = int(ttl_s * 1000)
        self._extend = client.register_script(_EXTEND)
        self._release = client.register_script(_RELEASE)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = threading.Event()

    def acquire(self) -> bool:
        if not self.r.set(self.key, self.token, nx=True, px=self.ttl_ms):
            return False
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.key}", daemon=True)
        self._thread.start()
        return True

    def _beat(self) -> None:
        period = self.ttl_ms / 3000
        while not self._stop.wait(period):
            try:
                if not self._extend(keys=[self.key], args=[self.token, self.ttl_ms]):
                    self.lost.set()  # taken over: the run must stop
                    return
            except REDIS_ERRORS:
                continue  # keep trying; the lease survives a short outage

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        try:
            self._release(keys=[self.key], args=[self.token])
        except REDIS_ERRORS:
            pass  # it expires by itself
