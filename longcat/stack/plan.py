"""Which services ``longcat up`` starts, with which flags, ports, paths and logs: pure data from the options.

Ports (all configurable; internal services listen on 127.0.0.1, the gateway on ``--host``):

- gateway ``--port`` (50051), encoder ``--encoder-port`` (50061), trainer ``--trainer-port`` (50063);
- denoiser worker *i* on the *i*-th number from ``--denoiser-port`` (50062) upward that no other service of
  the plan uses (so with the defaults: 50062, 50064, 50065, ...);
- Prometheus ``/metrics`` from the base ``--metrics-port`` (9460): gateway +0, encoder +1, first denoiser +2,
  trainer +3, further denoisers +4, +5, ...; ``--metrics-port 0`` turns metrics off.

Paths: everything lives under the data dir (``--data-dir``, default ``$LONGCAT_DATA_DIR`` or
``~/.cache/longcat/stack``)::

    <data-dir>/redis/          the private Redis's data (appendonly), when ``longcat up`` starts one
    <data-dir>/logs/<name>.log one log per service (appended across restarts), redis.log too
    <data-dir>/adapters/       the adapter store shared by the gateway, the trainer and the denoisers
    <data-dir>/data/           training datasets (the gateway's and trainer's --data-root)
    <data-dir>/outputs/        training outputs (--output-root)
    <data-dir>/stack.json      addresses and pids of the running stack (removed when it stops)
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from longcat.errors import InvalidArgument, LongCatError
from longcat.rpc.config import DEFAULT_METRICS_PORTS, DEFAULT_PORTS

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")

# Stop order: lower tiers stop first (the gateway stops taking work, the workers finish theirs while the
# encoder still answers, then the encoder, then the private Redis).
TIER_GATEWAY, TIER_WORKERS, TIER_ENCODER, TIER_REDIS = 0, 1, 2, 3


class PortTaken(LongCatError):
    code = "UNAVAILABLE"


def default_data_dir() -> Path:
    env = os.environ.get("LONGCAT_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("LONGCAT_CACHE", Path.home() / ".cache" / "longcat")).expanduser() / "stack"


@dataclass
class StackOptions:
    model: str = "tiny"
    port: int = DEFAULT_PORTS["gateway"]
    http_port: int = 8080                         # the gateway's HTTP door (0 = off)
    host: str = "127.0.0.1"                       # the gateway's listen address (0.0.0.0: reachable from outside)
    encoder_port: int = DEFAULT_PORTS["encoder"]
    denoiser_port: int = DEFAULT_PORTS["denoiser"]
    trainer_port: int = DEFAULT_PORTS["trainer"]
    metrics_port: int = DEFAULT_METRICS_PORTS["gateway"]   # base; 0 = off
    redis_url: str = DEFAULT_REDIS_URL
    workers: int = 1
    trainer: bool = True
    data_dir: Path | None = None
    adapter_dir: Path | None = None
    blob_dir: Path | None = None                  # reference images and results (Redis keeps references)
    data_root: Path | None = None
    output_root: Path | None = None
    api_keys_file: str = ""
    device: str | None = None
    precision: str | None = None
    namespace: str = "lc"
    log_level: str = "INFO"
    extra: dict[str, list[str]] = field(default_factory=dict)   # service kind -> extra flags
    redis_ha: bool = False   # a local primary + replica + 3 Sentinels under <data-dir>/redis-ha (redis_url unused)
    redis_ha_down_after_ms: int = 5000   # how soon the Sentinels fail over from a silent primary
    redis_ha_replicas: int = 1           # 2: durable acknowledgement goes on after losing one node


@dataclass
class ServiceSpec:
    name: str            # encoder, denoiser-0, denoiser-1, trainer, gateway
    kind: str            # the services.<kind> module
    host: str
    port: int
    metrics_port: int
    args: list[str]
    tier: int
    log_path: Path

    @property
    def address(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"{host}:{self.port}"


@dataclass
class RedisSpec:
    url: str
    host: str
    port: int
    password: str | None
    data_dir: Path
    log_path: Path


@dataclass
class PortUse:
    host: str
    port: int
    what: str
    hint: str


@dataclass
class StackPlan:
    options: StackOptions
    data_dir: Path
    logs_dir: Path
    adapter_dir: Path
    data_root: Path
    output_root: Path
    redis: RedisSpec
    services: list[ServiceSpec]   # start order: encoder, denoisers, trainer, gateway
    blob_dir: Path | None = None  # the blob store shared by the gateway, denoisers and trainer

    @property
    def http_url(self) -> str | None:
        """Where the gateway's HTTP door answers (None: --http-port 0)."""
        if not self.options.http_port:
            return None
        host = "127.0.0.1" if self.gateway.host in ("0.0.0.0", "::", "") else self.gateway.host
        return f"http://{host}:{self.options.http_port}"

    @property
    def gateway(self) -> ServiceSpec:
        return next(s for s in self.services if s.kind == "gateway")

    @property
    def state_path(self) -> Path:
        return self.data_dir / "stack.json"

    def ports(self, with_redis: bool) -> list[PortUse]:
        uses = []
        for s in self.services:
            flag = {"gateway": "--port", "encoder": "--encoder-port", "denoiser": "--denoiser-port",
                    "trainer": "--trainer-port"}[s.kind]
            uses.append(PortUse(s.host, s.port, f"{s.name} gRPC", f"pick another with {flag}"))
            if s.kind == "gateway" and self.options.http_port:
                uses.append(PortUse(s.host, self.options.http_port, "gateway HTTP",
                                    "pick another with --http-port, or --http-port 0 (HTTP off)"))
            if s.metrics_port:
                uses.append(PortUse("0.0.0.0", s.metrics_port, f"{s.name} metrics",
                                    "pick another base with --metrics-port, or --metrics-port 0 (metrics off)"))
        if with_redis:
            uses.append(PortUse(self.redis.host, self.redis.port, f"private redis-server for {self.redis.url}",
                                "it answers no Redis PING: free it, or point --redis-url at a running Redis"))
        return uses


def parse_redis_url(url: str, data_dir: Path, logs_dir: Path) -> RedisSpec:
    u = urlparse(url)
    if u.scheme not in ("redis", "rediss", "unix", "redis+sentinel", "sentinel"):
        raise InvalidArgument(f"{url!r} is not a redis:// URL", "redis_url")
    if u.scheme in ("redis+sentinel", "sentinel"):  # Sentinels: never started privately; the first for messages
        from longcat.jobs.redis_url import parse

        target = parse(url)
        host, port = target.sentinels[0]
        return RedisSpec(url=url, host=host, port=port, password=target.password, data_dir=data_dir / "redis",
                         log_path=logs_dir / "redis.log")
    return RedisSpec(url=url, host=u.hostname or "127.0.0.1", port=u.port or 6379, password=u.password,
                     data_dir=data_dir / "redis", log_path=logs_dir / "redis.log")


def _abs(p: Path | str | None, default: Path) -> Path:
    return Path(os.path.abspath(os.path.expanduser(p))) if p else default


def make_plan(opts: StackOptions, model_path: str | None = None) -> StackPlan:
    """The services to start. ``model_path``: the resolved model (default ``opts.model`` as given)."""
    if opts.workers < 1:
        raise InvalidArgument("at least one denoiser worker is needed", "workers")
    data_dir = _abs(opts.data_dir, default_data_dir().absolute())
    logs = data_dir / "logs"
    adapter_dir = _abs(opts.adapter_dir, data_dir / "adapters")
    blob_dir = _abs(opts.blob_dir, data_dir / "blobs")
    data_root = _abs(opts.data_root, data_dir / "data")
    output_root = _abs(opts.output_root, data_dir / "outputs")
    redis = parse_redis_url(opts.redis_url, data_dir, logs)
    model = model_path or opts.model

    fixed = {"gateway": opts.port, "encoder": opts.encoder_port, "trainer": opts.trainer_port if opts.trainer else None}
    for name, port in fixed.items():
        if port is not None and not 0 < port < 65536:
            raise InvalidArgument(f"{port} is not a port (1-65535)", f"{name}_port" if name != "gateway" else "port")
    used = {p for p in fixed.values() if p}
    taken_by = {}
    for name, port in fixed.items():
        if port and port in taken_by:
            raise InvalidArgument(f"the {name} and the {taken_by[port]} would both listen on port {port}", "port")
        if port:
            taken_by[port] = name
    den_ports = _take(opts.denoiser_port, opts.workers, used)

    mbase = opts.metrics_port
    if mbase:
        m = {"gateway": mbase, "encoder": mbase + 1, "trainer": mbase + 3 if opts.trainer else None}
        m_used = {p for p in m.values() if p} | {mbase + 2}
        den_metrics = [mbase + 2, *_take(mbase + 4, opts.workers - 1, m_used)]
    else:
        m = {"gateway": 0, "encoder": 0, "trainer": 0}
        den_metrics = [0] * opts.workers
    clash = (set(den_ports) | used) & ({p for p in m.values() if p} | set(den_metrics))
    if clash:
        raise InvalidArgument(f"port {min(clash)} would be both a gRPC and a metrics port", "metrics_port")
    if redis.host in LOCAL_HOSTS and redis.port in (used | set(den_ports) | set(m.values()) | set(den_metrics)):
        raise InvalidArgument(f"port {redis.port} is the Redis URL's port and a service's port", "redis_url")

    model_args = ["--model", model]
    if opts.device:
        model_args += ["--device", opts.device]
    common = ["--redis-url", opts.redis_url, "--namespace", opts.namespace, "--adapter-dir", str(adapter_dir),
              "--blob-dir", str(blob_dir)]
    roots = ["--data-root", str(data_root), "--output-root", str(output_root)]
    log_level = ["--log-level", opts.log_level]
    encoder_addr = f"127.0.0.1:{opts.encoder_port}"

    def spec(name, kind, port, mport, args, tier, host="127.0.0.1"):
        return ServiceSpec(name, kind, host, port, mport, [*args, *log_level, *opts.extra.get(kind, [])], tier,
                           logs / f"{name}.log")

    services = [spec("encoder", "encoder", opts.encoder_port, m["encoder"],
                     [*model_args, *(["--precision", opts.precision] if opts.precision else [])], TIER_ENCODER)]
    for i, (port, mport) in enumerate(zip(den_ports, den_metrics)):
        services.append(spec(f"denoiser-{i}", "denoiser", port, mport,
                             [*model_args, *(["--precision", opts.precision] if opts.precision else []),
                              *common, "--encoder", encoder_addr], TIER_WORKERS))
    if opts.trainer:
        services.append(spec("trainer", "trainer", opts.trainer_port, m["trainer"],
                             [*model_args, *common, *roots, "--encoder", encoder_addr], TIER_WORKERS))
    gateway_args = [*common, *roots, "--model", model,   # the gateway loads the tokenizer only
                    "--http-port", str(opts.http_port)]
    if opts.api_keys_file:
        gateway_args += ["--api-keys-file", str(_abs(opts.api_keys_file, Path()))]
    services.append(spec("gateway", "gateway", opts.port, m["gateway"], gateway_args, TIER_GATEWAY, host=opts.host))
    return StackPlan(opts, data_dir, logs, adapter_dir, data_root, output_root, redis, services, blob_dir=blob_dir)


def _take(start: int, n: int, used: set[int]) -> list[int]:
    """``n`` ports from ``start`` upward, skipping (and then reserving) ``used`` ones."""
    out, p = [], start
    while len(out) < n:
        if not 0 < p < 65536:
            raise InvalidArgument(f"no room for {n} ports from {start}", "denoiser_port")
        if p not in used:
            out.append(p)
            used.add(p)
        p += 1
    return out


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now (as gRPC and Prometheus do: with SO_REUSEADDR, so
    sockets in TIME_WAIT don't count)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def check_ports(uses: list[PortUse]) -> None:
    """Raise :class:`PortTaken` (one clear line) for the first port something else already holds."""
    for u in uses:
        if not port_free(u.host, u.port):
            raise PortTaken(f"port {u.port} ({u.what}) is already in use on {u.host}: {u.hint}; nothing was started")
