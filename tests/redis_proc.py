"""A private ``redis-server`` process for tests: its own port and data folder, restartable."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis

from longcat.launch import free_port


class RedisProcess:
    def __init__(self, data_dir: Path, port: int | None = None, appendonly: bool = True,
                 appendfsync: str = "always"):
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed: run `make test` (it installs it) or "
                               "`apt-get install -y redis-server`")
        self.dir = Path(data_dir)
        self.port = port or free_port()
        self.appendonly = appendonly
        self.appendfsync = appendfsync  # "everysec" is what `longcat up` and the deploy ship
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisProcess":
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
               "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", self.appendfsync,
               "--daemonize", "no", "--protected-mode", "yes"]
        self.proc = subprocess.Popen(cmd, stdout=open(self.dir / "redis.log", "ab"), stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                client.ping()
                return self
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)

    def kill(self) -> None:
        """SIGKILL: no shutdown save; what comes back is what the AOF had (see RELIABILITY.md)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(20)

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)
