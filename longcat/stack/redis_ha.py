"""A local replicated Redis for tests and demos: a primary, one replica and three Sentinels (Debian's
``redis-server`` and ``redis-sentinel``), on free ports, bound to 127.0.0.1, under ``<dir>``.

Each process has its own config file there, which Redis and Sentinel rewrite as roles change (a failover
promotes the replica; the old primary comes back as a replica), so a restarted node, or a later
``longcat up --redis-ha`` on the same data dir, keeps the roles and ports Sentinel decided on. The stack
connects through ``redis+sentinel://127.0.0.1:S1,127.0.0.1:S2,127.0.0.1:S3/MASTER/0`` and never needs to
know which node is the primary.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

from longcat.errors import LongCatError, Unavailable
from longcat.launch import free_port, terminate

MASTER = "longcat"
INSTALL_HINT = ("{binary} is not installed: on Debian/Ubuntu `sudo apt-get install -y redis-server "
                "redis-sentinel` (or `make redis`)")


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise Unavailable(INSTALL_HINT.format(binary=name))
    return path


class HANode:
    """One redis-server or redis-sentinel process: the ``spawn``/``proc``/``stop`` surface of PrivateRedis, so
    the stack's supervisor restarts it like any other child."""

    def __init__(self, name: str, kind: str, port: int, conf: Path, log_path: Path, password: str | None = None,
                 popen_kwargs: dict | None = None, command_prefix: list[str] = ()):
        self.name, self.kind, self.port, self.conf, self.log_path = name, kind, port, conf, log_path
        self.address = f"127.0.0.1:{port}"
        self.password = password if kind == "server" else None
        self.popen_kwargs = dict(popen_kwargs or {})
        self.command_prefix = list(command_prefix)
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def command(self) -> list[str]:
        return [_binary("redis-server" if self.kind == "server" else "redis-sentinel"), str(self.conf)]

    def spawn(self) -> subprocess.Popen:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self._log is not None:
            self._log.close()
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([*self.command_prefix, *self.command()], stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **self.popen_kwargs)
        return self.proc

    def client(self, timeout: float = 0.5):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password,
                           socket_connect_timeout=timeout, socket_timeout=timeout)

    def healthy(self) -> bool:
        import redis

        client = self.client()
        try:
            return bool(client.ping())
        except redis.exceptions.RedisError:
            return False
        finally:
            client.close()

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        terminate(self.proc, signal.SIGTERM, timeout)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode


class LocalRedisHA:
    """The five processes and their URL. ``down_after_ms`` / ``failover_timeout_ms``: how soon Sentinel
    declares the primary dead and how long one failover attempt may take (tests use short values)."""

    def __init__(self, root: Path, password: str | None = None, down_after_ms: int = 5000,
                 failover_timeout_ms: int = 10000, master: str = MASTER, popen_kwargs: dict | None = None,
                 command_prefix: list[str] = (), replicas: int = 1):
        self.root = Path(root)
        self.replicas = replicas  # with durable acknowledgement, 2 keep acknowledging after losing one node
        self.master = master
        self.password = password
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.popen_kwargs = popen_kwargs
        self.command_prefix = list(command_prefix)
        self.nodes: list[HANode] = []

    # --- configuration ------------------------------------------------------------------------------------

    def prepare(self) -> "LocalRedisHA":
        """Write the config files (first time) or reuse them (their ports and the roles Sentinel recorded)."""
        for binary in ("redis-server", "redis-sentinel"):
            _binary(binary)
        self.root.mkdir(parents=True, exist_ok=True)
        layout = self.root / "ha.json"
        if layout.exists():
            ports = json.loads(layout.read_text())
        else:
            ports = {"a": free_port(), "b": free_port(), "s": [free_port() for _ in range(3)],
                     "more": [free_port() for _ in range(self.replicas - 1)]}
            self._write_configs(ports)
            layout.write_text(json.dumps(ports))
        logs = self.root / "logs"
        make = lambda name, kind, port: HANode(name, kind, port, self.root / name / f"{kind}.conf",  # noqa: E731
                                               logs / f"{name}.log", self.password, self.popen_kwargs,
                                               self.command_prefix)
        self.nodes = [make("redis-a", "server", ports["a"]), make("redis-b", "server", ports["b"]),
                      *[make(f"redis-{chr(ord('c') + i)}", "server", p) for i, p in enumerate(ports.get("more", []))],
                      *[make(f"sentinel-{i}", "sentinel", p) for i, p in enumerate(ports["s"])]]
        return self

    def _write_configs(self, ports: dict) -> None:
        common = ["bind 127.0.0.1", "protected-mode no", "daemonize no", 'logfile ""']
        data = [("redis-a", ports["a"], None), ("redis-b", ports["b"], ports["a"]),
                *[(f"redis-{chr(ord('c') + i)}", p, ports["a"]) for i, p in enumerate(ports.get("more", []))]]
        for name, port, replica_of in data:
            d = self.root / name
            d.mkdir(parents=True, exist_ok=True)
            lines = [*common, f"port {port}", f"dir {d}", "appendonly yes", "appendfsync everysec", 'save ""',
                     "repl-diskless-sync yes", "repl-diskless-sync-delay 0"]
            if self.password:
                lines += [f"requirepass {self.password}", f"masterauth {self.password}"]
            if replica_of:
                lines.append(f"replicaof 127.0.0.1 {replica_of}")
            (d / "server.conf").write_text("\n".join(lines) + "\n")
        for i, port in enumerate(ports["s"]):
            d = self.root / f"sentinel-{i}"
            d.mkdir(parents=True, exist_ok=True)
            lines = [*common, f"port {port}", f"dir {d}",
                     f"sentinel monitor {self.master} 127.0.0.1 {ports['a']} 2",
                     f"sentinel down-after-milliseconds {self.master} {self.down_after_ms}",
                     f"sentinel failover-timeout {self.master} {self.failover_timeout_ms}",
                     f"sentinel parallel-syncs {self.master} 1"]
            if self.password:
                lines.append(f"sentinel auth-pass {self.master} {self.password}")
            (d / "sentinel.conf").write_text("\n".join(lines) + "\n")

    # --- the URL and the roles ----------------------------------------------------------------------------

    @property
    def sentinels(self) -> list[HANode]:
        return [n for n in self.nodes if n.kind == "sentinel"]

    @property
    def servers(self) -> list[HANode]:
        return [n for n in self.nodes if n.kind == "server"]

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        hosts = ",".join(n.address for n in self.sentinels)
        return f"redis+sentinel://{auth}{hosts}/{self.master}/0"

    def primary(self) -> HANode | None:
        """The node the Sentinels currently name as primary (None while none answers)."""
        import redis

        for s in self.sentinels:
            client = s.client()
            try:
                host, port = client.sentinel_get_master_addr_by_name(self.master)
                return next((n for n in self.servers if n.port == int(port)), None)
            except (redis.exceptions.RedisError, TypeError, ValueError):
                continue
            finally:
                client.close()
        return None

    def replica(self) -> HANode | None:  # one of them
        primary = self.primary()
        return next((n for n in self.servers if n is not primary), None)

    # --- standalone use (tests, demos without the supervisor) ---------------------------------------------

    def start(self, timeout: float = 30.0) -> "LocalRedisHA":
        if not self.nodes:
            self.prepare()
        for n in self.nodes:
            n.spawn()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Every process answers, the replica is in sync and every Sentinel knows the others."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self._ready():
                    return
            except LongCatError:
                raise
            except Exception:  # noqa: BLE001 - not ready yet
                pass
            for n in self.nodes:
                if n.proc is not None and n.proc.poll() is not None:
                    raise Unavailable(f"{n.name} exited with {n.proc.returncode}: see {n.log_path}")
            time.sleep(0.1)
        raise Unavailable(f"the local Redis HA set did not become ready within {timeout:.0f}s: see {self.root}/logs")

    def _ready(self) -> bool:
        if not all(n.healthy() for n in self.nodes):
            return False
        primary = self.primary()
        if primary is None:
            return False
        info = primary.client().info("replication")
        want = len(self.servers) - 1
        if info.get("connected_slaves", 0) < want or \
                any(info.get(f"slave{i}", {}).get("state") != "online" for i in range(want)):
            return False
        for s in self.sentinels:
            m = s.client().sentinel_master(self.master)
            if int(m.get("num-other-sentinels", 0)) < 2 or int(m.get("num-slaves", 0)) < want:
                return False
        return True

    def stop(self) -> None:
        for n in reversed(self.nodes):
            n.stop()
