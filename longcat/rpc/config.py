"""Service configuration: every flag ``--foo-bar`` also reads ``LONGCAT_FOO_BAR`` (flags win)."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields

ENV_PREFIX = "LONGCAT_"

# Default ports, one per service, so the whole stack fits on one machine.
DEFAULT_PORTS = {"gateway": 50051, "encoder": 50061, "denoiser": 50062, "trainer": 50063}
DEFAULT_METRICS_PORTS = {"gateway": 9460, "encoder": 9461, "denoiser": 9462, "trainer": 9463}


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


class EnvDefaults(argparse.ArgumentParser):
    """An ArgumentParser whose options default to their LONGCAT_* environment variable.

    A variable that does not parse is reported like a bad flag: one line naming the variable and its flag,
    exit status 2 (at parse time, so ``--help`` still works)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.env_errors: list[str] = []

    def add_argument(self, *names, **kwargs):
        long = next((n for n in names if n.startswith("--")), None)
        if kwargs.get("action") in ("help", "version"):  # --help is not a setting: no LONGCAT_HELP
            return super().add_argument(*names, **kwargs)
        if long and "default" in kwargs and kwargs.get("action") not in ("store_true", "store_false"):
            env = os.environ.get(env_name(long))
            if env is not None:
                convert = kwargs.get("type", str)
                try:
                    kwargs["default"] = convert(env)
                except (TypeError, ValueError) as exc:
                    kind = getattr(convert, "__name__", "value")
                    self.env_errors.append(f"{env_name(long)}={env!r} is not a valid {kind} (the variable "
                                           f"sets {long}): {exc}")
            kwargs["help"] = (kwargs.get("help") or "") + f" [env {env_name(long)}]"
        elif long and kwargs.get("action") == "store_true":
            env = os.environ.get(env_name(long))
            if env is not None:
                kwargs["default"] = env.lower() in ("1", "true", "yes", "on")
            kwargs["help"] = (kwargs.get("help") or "") + f" [env {env_name(long)}]"
        return super().add_argument(*names, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        parsed = super().parse_known_args(args, namespace)
        if self.env_errors:
            self.error("; ".join(self.env_errors))
        return parsed


def add_server_args(p: argparse.ArgumentParser, service: str, threads: int = 8) -> None:
    p.add_argument("--host", default="0.0.0.0", help="address to listen on")
    p.add_argument("--port", type=int, default=DEFAULT_PORTS[service], help="gRPC port (0 = any free port)")
    p.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORTS[service],
                   help="Prometheus /metrics port (0 = off)")
    p.add_argument("--max-message-mb", type=int, default=256,
                   help="largest gRPC message sent or received, MiB (images and embeddings exceed 4 MiB)")
    p.add_argument("--grace-s", type=float, default=30.0,
                   help="on SIGTERM: seconds in-flight calls get to finish before they are cancelled")
    p.add_argument("--threads", type=int, default=threads, help="gRPC handler threads")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    p.add_argument("--otlp-endpoint", default="",
                   help="export OpenTelemetry traces over OTLP/HTTP to this URL (e.g. http://collector:4318); "
                        "'' = the standard OTEL_EXPORTER_OTLP_ENDPOINT, and neither = tracing off")


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="tiny", help="diffusers folder, hub id, or 'tiny'")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--precision", default="fp32", help="fp32, bf16, fp16, int8-quanto, fp8-torchao")
    p.add_argument("--max-pixels", type=int, default=2048 * 2048, help="largest output (width x height)")
    p.add_argument("--max-steps", type=int, default=200, help="most denoising steps a request may ask for")


@dataclass(frozen=True)
class ServerSettings:
    """What every service's gRPC server takes (``add_server_args``), typed. A service's settings class extends
    this with its own flags; ``from_args`` builds it once from the parsed flags and LONGCAT_* variables (a bad
    value has already exited 2 naming it, in the parser), and the rest of the service reads only the settings."""

    host: str
    port: int
    metrics_port: int
    max_message_mb: int
    grace_s: float
    threads: int
    log_level: str
    otlp_endpoint: str

    @classmethod
    def from_args(cls, args: argparse.Namespace):
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


@dataclass(frozen=True)
class ModelServerSettings(ServerSettings):
    """A service that hosts model components (``add_model_args``)."""

    model: str
    device: str
    precision: str
    max_pixels: int
    max_steps: int


def settings_cover_parser(settings_cls, parser: argparse.ArgumentParser) -> set[str]:
    """Flags of ``parser`` that ``settings_cls`` lacks, and fields it has that no flag sets (both empty: typed
    settings and flags agree)."""
    flags = {a.dest for a in parser._actions if a.option_strings and a.dest != "help"}
    return flags ^ {f.name for f in fields(settings_cls)}
