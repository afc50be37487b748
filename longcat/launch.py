"""Start LongCat services as child processes: free ports, health waits, clean SIGTERM teardown.

Used by the tests, the benchmarks and the local stack launcher."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # services/ is importable from here


_HANDED_OUT: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port free now, for a service started next. Taken below the kernel's ephemeral range: a port from
    ``bind(0)`` can become some outgoing connection's source port before the service binds it (seen in CI as
    "Address already in use"), which a port outside that range cannot; never the same port twice per process."""
    rng = random.SystemRandom()
    low = _ephemeral_low()
    for _ in range(200):
        port = rng.randrange(min(15000, low - 1000), low)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    with socket.socket() as s:  # no luck below the range: let the kernel choose
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServiceProcess:
    """A service started as ``python -m services.<name>`` with its own log file.

    By default it listens on 127.0.0.1 on free ports and logs to ``<log_dir>/<name>-<port>.log`` (overwritten).
    The local stack supervisor (``longcat up``) fixes the ports, the host, the log path (appended to, so one
    file spans restarts) and extra ``subprocess.Popen`` options, and calls :meth:`spawn` again to restart.
    """

    def __init__(self, name: str, args: list[str], log_dir: Path, env: dict | None = None, *,
                 port: int | None = None, metrics_port: int | None = None, host: str = "127.0.0.1",
                 log_path: Path | None = None, module: str | None = None, popen_kwargs: dict | None = None,
                 start: bool = True):
        self.name = name
        self.port = port or free_port()
        self.metrics_port = free_port() if metrics_port is None else metrics_port
        self.host = host
        # Where clients on this machine connect (a wildcard listen address is reached over loopback).
        connect_host = "127.0.0.1" if host in ("0.0.0.0", "", "::", "[::]") else host
        self.address = f"{connect_host}:{self.port}"
        self.append_log = log_path is not None
        self.log_path = Path(log_path) if log_path is not None else Path(log_dir) / f"{name}-{self.port}.log"
        # The gateway's HTTP door: a free port too (unless the args choose one; 0 = off), so that gateways
        # started side by side (tests, benches) never fight over the default 8080.
        self.http_port = None
        http_args: list[str] = []
        if (module or f"services.{name}") == "services.gateway":
            given = list(args)
            self.http_port = int(given[given.index("--http-port") + 1]) if "--http-port" in given else free_port()
            http_args = ["--http-port", str(self.http_port)]
        self.http_url = f"http://{connect_host}:{self.http_port}" if self.http_port else None
        self.cmd = [sys.executable, "-m", module or f"services.{name}", "--host", host, "--port", str(self.port),
                    "--metrics-port", str(self.metrics_port), *http_args, *args]
        self.env = {**os.environ, **(env or {})}
        self.popen_kwargs = dict(popen_kwargs or {})
        self.proc: subprocess.Popen | None = None
        self._log = None
        if start:
            self.spawn()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def spawn(self) -> subprocess.Popen:
        """Start the process (again, on the same ports: the previous one must have exited)."""
        if self._log is not None:
            self._log.close()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab" if self.append_log else "wb")
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=self.env, **self.popen_kwargs)
        return self.proc

    def wait_serving(self, timeout: float = 120.0) -> "ServiceProcess":
        from longcat.rpc.channel import health_status, make_channel

        channel = make_channel(self.address)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
                if health_status(channel) == "SERVING":
                    return self
                time.sleep(0.1)
        finally:
            channel.close()
        raise TimeoutError(f"{self.name} not SERVING after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def metrics(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def stop(self, sig=signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc is None:
            return 0
        terminate(self.proc, sig, timeout)
        if self._log is not None:
            self._log.close()
        return self.proc.returncode


def terminate(proc: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 60.0) -> int:
    """Ask ``proc`` to stop with ``sig``; SIGKILL it if it is still there after ``timeout`` seconds."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
