"""Service configuration: every flag ``--foo-bar`` also reads ``LONGCAT_FOO_BAR`` (flags win)."""

from __future__ import annotations

import argparse
import os

ENV_PREFIX = "LONGCAT_"

# Default ports, one per service, so the whole stack fits on one machine.
DEFAULT_PORTS = {"gateway": 50051, "encoder": 50061, "denoiser": 50062, "trainer": 50063}
DEFAULT_METRICS_PORTS = {"gateway": 9460, "encoder": 9461, "denoiser": 9462, "trainer": 9463}


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


class EnvDefaults(argparse.ArgumentParser):
    """An ArgumentParser whose options default to their LONGCAT_* environment variable."""

    def add_argument(self, *names, **kwargs):
        long = next((n for n in names if n.startswith("--")), None)
        if kwargs.get("action") in ("help", "version"):  # --help is not a setting: no LONGCAT_HELP
            return super().add_argument(*names, **kwargs)
        if long and "default" in kwargs and kwargs.get("action") not in ("store_true", "store_false"):
            env = os.environ.get(env_name(long))
            if env is not None:
                kwargs["default"] = kwargs.get("type", str)(env)
            kwargs["help"] = (kwargs.get("help") or "") + f" [env {env_name(long)}]"
        elif long and kwargs.get("action") == "store_true":
            env = os.environ.get(env_name(long))
            if env is not None:
                kwargs["default"] = env.lower() in ("1", "true", "yes", "on")
            kwargs["help"] = (kwargs.get("help") or "") + f" [env {env_name(long)}]"
        return super().add_argument(*names, **kwargs)


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


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="tiny", help="diffusers folder, hub id, or 'tiny'")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--precision", default="fp32", help="fp32, bf16, fp16, int8-quanto, fp8-torchao")
    p.add_argument("--max-pixels", type=int, default=2048 * 2048, help="largest output (width x height)")
    p.add_argument("--max-steps", type=int, default=200, help="most denoising steps a request may ask for")
