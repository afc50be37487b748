"""Find the Redis the stack uses, or start a private ``redis-server`` for it.

A Redis that already answers at the URL is used as it is and never stopped. Otherwise, when the URL points
at this machine, ``longcat up`` starts ``redis-server`` on the URL's port, bound to 127.0.0.1, with its
data in ``<data-dir>/redis`` (append-only file, so queued jobs survive a restart of the stack), supervises it
like the services, and stops it last.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time

from longcat.errors import LongCatError, Unavailable
from longcat.launch import terminate
from longcat.redact import redact_url
from longcat.stack.plan import LOCAL_HOSTS, RedisSpec

INSTALL_HINT = ("redis-server is not installed, and no Redis answers at {url}. Install it "
                "(Debian/Ubuntu: `sudo apt-get install -y redis-server`, or `make redis`; macOS: "
                "`brew install redis`; or use the redis:7 container image), or point --redis-url at a running Redis")


def probe(url: str, timeout: float = 1.0) -> str:
    """'ok' when a Redis answers PING at ``url``, 'down' when nothing answers there; raises when something
    answers but refuses us (wrong password, not Redis)."""
    import redis

    from longcat.jobs.redis_url import make_client

    client = make_client(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
        return "ok"
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        if isinstance(exc, redis.exceptions.AuthenticationError):
            raise Unavailable(f"a Redis answers at {redact_url(url)} but refuses the URL's credentials: {exc}",
                              "redis_url") from None
        return "down"
    except redis.exceptions.ResponseError as exc:
        raise Unavailable(f"something answers at {redact_url(url)} but not as a usable Redis: {exc}", "redis_url") from None
    finally:
        client.close()


def redis_server_binary(url: str) -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise Unavailable(INSTALL_HINT.format(url=redact_url(url)))
    return path


def can_start_private(spec: RedisSpec) -> None:
    """Raise a clear error when no private Redis can be started for this URL."""
    if not spec.url.startswith("redis://") or spec.host not in LOCAL_HOSTS:
        raise Unavailable(f"no Redis answers at {redact_url(spec.url)}, and longcat up only starts one on this machine "
                          f"(redis://127.0.0.1:PORT/DB): start that Redis, or use a local --redis-url")
    redis_server_binary(spec.url)


class PrivateRedis:
    """``redis-server`` as a supervised child: same ``spawn``/``proc``/``stop`` surface as ServiceProcess."""

    name = "redis"

    def __init__(self, spec: RedisSpec, popen_kwargs: dict | None = None, command_prefix: list[str] = ()):
        self.spec = spec
        self.port = spec.port
        self.address = f"127.0.0.1:{spec.port}"
        self.url = spec.url
        self.log_path = spec.log_path
        self.popen_kwargs = dict(popen_kwargs or {})
        self.command_prefix = list(command_prefix)
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def command(self) -> list[str]:
        cmd = [redis_server_binary(self.url), "--port", str(self.port), "--bind", "127.0.0.1",
               "--dir", str(self.spec.data_dir), "--appendonly", "yes", "--appendfsync", "everysec",
               "--save", "", "--daemonize", "no", "--protected-mode", "yes", "--logfile", ""]
        if self.spec.password:
            cmd += ["--requirepass", self.spec.password]
        return cmd

    def spawn(self) -> subprocess.Popen:
        self.spec.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self._log is not None:
            self._log.close()
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([*self.command_prefix, *self.command()], stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, **self.popen_kwargs)
        return self.proc

    def healthy(self) -> bool:
        try:
            return probe(self.url, timeout=0.5) == "ok"
        except LongCatError:
            return False

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Unavailable(f"redis-server exited with {self.proc.returncode} on port {self.port}: "
                                  f"see {self.log_path}\n{self.log()}")
            if self.healthy():
                return
            time.sleep(0.05)
        raise Unavailable(f"redis-server did not answer on port {self.port} within {timeout:.0f}s: "
                          f"see {self.log_path}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        terminate(self.proc, signal.SIGTERM, timeout)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode
