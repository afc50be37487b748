"""``longcat up``: the whole stack on this machine, supervised, in the foreground.

Redis (a private ``redis-server`` when none answers at ``--redis-url``), the encoder, ``--workers``
denoisers, the trainer and the gateway start as child processes on the tiny model by default. The command
prints the gateway's address once every health check passes (``--json``: one JSON line with every address
and pid), restarts a service that crashes (with backoff), and stops everything on Ctrl-C / SIGTERM.
Progress and events go to stderr; service logs to ``<data-dir>/logs/<service>.log``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

from longcat.redact import redact_url
from longcat.rpc.config import DEFAULT_METRICS_PORTS, DEFAULT_PORTS


def register(sub) -> None:
    from longcat.stack.plan import DEFAULT_REDIS_URL

    p = sub.add_parser("up", help="run the whole stack on this machine (Redis + all services, supervised)",
                       description=__doc__.split("\n\n", 1)[1].replace("``", ""))
    p.add_argument("--model", default=os.environ.get("LONGCAT_MODEL") or "tiny",
                   help="diffusers folder, hub id or 'tiny' (default $LONGCAT_MODEL or tiny)")
    p.add_argument("--port", type=int, default=DEFAULT_PORTS["gateway"],
                   help=f"the gateway's port (default {DEFAULT_PORTS['gateway']})")
    p.add_argument("--host", default="127.0.0.1",
                   help="the gateway's listen address (default 127.0.0.1; 0.0.0.0 to serve other machines). "
                        "The other services always listen on 127.0.0.1")
    p.add_argument("--http-port", type=int, default=8080,
                   help="the gateway's HTTP port: OpenAI-compatible /v1/images/edits, REST jobs, docs at /docs "
                        "(default 8080; 0 = HTTP off)")
    p.add_argument("--encoder-port", type=int, default=DEFAULT_PORTS["encoder"],
                   help=f"default {DEFAULT_PORTS['encoder']}")
    p.add_argument("--denoiser-port", type=int, default=DEFAULT_PORTS["denoiser"],
                   help=f"first denoiser's port; the others take the next unused numbers "
                        f"(default {DEFAULT_PORTS['denoiser']})")
    p.add_argument("--trainer-port", type=int, default=DEFAULT_PORTS["trainer"],
                   help=f"default {DEFAULT_PORTS['trainer']}")
    p.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORTS["gateway"],
                   help="first /metrics port: gateway +0, encoder +1, denoiser-0 +2, trainer +3, other denoisers "
                        f"+4... (default {DEFAULT_METRICS_PORTS['gateway']}; 0 = metrics off)")
    p.add_argument("--redis-url", default=os.environ.get("LONGCAT_REDIS_URL") or DEFAULT_REDIS_URL,
                   help="Redis for jobs and events; when none answers there (and it is on this machine) a "
                        "private redis-server is started on its port (default $LONGCAT_REDIS_URL or "
                        f"{DEFAULT_REDIS_URL})")
    p.add_argument("--redis-ha", action="store_true",
                   help="instead of one Redis: a local primary, a replica and three Sentinels (redis-server, "
                        "redis-sentinel) on free ports under DATA_DIR/redis-ha; the services connect through "
                        "the Sentinels and follow a failover (for tests and demos; --redis-url is unused)")
    p.add_argument("--redis-ha-down-after-ms", type=int, default=5000,
                   help="with --redis-ha: how long the primary may be silent before the Sentinels promote the "
                        "replica (default 5000; written into the Sentinels' config on the first run)")
    p.add_argument("--redis-ha-replicas", type=int, default=1,
                   help="with --redis-ha: replicas of the primary (default 1; 2 keep durable acknowledgement "
                        "going after one node is lost; fixed on the first run)")
    p.add_argument("--namespace", default="lc", help="Redis key prefix (default lc)")
    p.add_argument("--workers", type=int, default=1, help="denoiser workers (default 1)")
    p.add_argument("--no-trainer", dest="trainer", action="store_false", help="don't start the trainer")
    p.add_argument("--data-dir", default=None,
                   help="everything the stack writes: redis/, logs/, adapters/, blobs/, data/, outputs/, stack.json "
                        "(default $LONGCAT_DATA_DIR or ~/.cache/longcat/stack)")
    p.add_argument("--adapter-dir", default=None, help="shared adapter store (default DATA_DIR/adapters)")
    p.add_argument("--blob-dir", default=None,
                   help="blob store for reference images and results; Redis keeps references (default DATA_DIR/blobs)")
    p.add_argument("--data-root", default=None, help="training datasets root (default DATA_DIR/data)")
    p.add_argument("--output-root", default=None, help="training outputs root (default DATA_DIR/outputs)")
    p.add_argument("--api-keys-file", default="", help="the gateway's API keys (JSON {key: owner} or lines "
                                                       "owner:key); none = auth off")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (services' default: auto)")
    p.add_argument("--precision", default=None,
                   help="encoder and denoisers: fp32, bf16, fp16, int8-quanto, fp8-torchao (default fp32)")
    p.add_argument("--service-arg", action="append", default=[], metavar="SERVICE:FLAG",
                   help="an extra flag for every process of one service, e.g. --service-arg=denoiser:--no-cfg-batch "
                        "or --service-arg=encoder:--cache-mb=0; repeatable")
    p.add_argument("--service-log-level", default=os.environ.get("LONGCAT_LOG_LEVEL") or "INFO",
                   help="the services' log level (default $LONGCAT_LOG_LEVEL, else INFO)")
    p.add_argument("--start-timeout-s", type=float, default=600.0,
                   help="how long the services get to become healthy (default 600; model downloads count)")
    p.add_argument("--stop-timeout-s", type=float, default=60.0,
                   help="per stop step: how long children get after SIGTERM before SIGKILL (default 60)")
    p.add_argument("--json", action="store_true",
                   help="stdout: one JSON line with every address and pid once up, then one line per event")
    p.set_defaults(func=run)


def options(args):
    from longcat.errors import InvalidArgument
    from longcat.stack.plan import StackOptions

    extra: dict[str, list[str]] = {}
    for item in args.service_arg:
        kind, sep, flag = item.partition(":")
        if not sep or kind not in ("encoder", "denoiser", "trainer", "gateway") or not flag:
            raise InvalidArgument(f"{item!r} is not SERVICE:FLAG with SERVICE one of encoder, denoiser, trainer, "
                                  f"gateway", "service_arg")
        extra.setdefault(kind, []).append(flag)
    return StackOptions(model=args.model, port=args.port, http_port=args.http_port, host=args.host,
                        encoder_port=args.encoder_port,
                        denoiser_port=args.denoiser_port, trainer_port=args.trainer_port,
                        metrics_port=args.metrics_port, redis_url=args.redis_url, workers=args.workers,
                        trainer=args.trainer, data_dir=args.data_dir, adapter_dir=args.adapter_dir,
                        blob_dir=args.blob_dir,
                        data_root=args.data_root, output_root=args.output_root, api_keys_file=args.api_keys_file,
                        device=args.device, precision=args.precision, namespace=args.namespace,
                        log_level=args.service_log_level, extra=extra, redis_ha=args.redis_ha,
                        redis_ha_down_after_ms=args.redis_ha_down_after_ms,
                        redis_ha_replicas=args.redis_ha_replicas)


class Printer:
    """Progress and events: lines on stderr; with --json also JSON lines on stdout once the stack is up."""

    def __init__(self, as_json: bool):
        self.as_json = as_json
        self.up = False
        self.t0 = time.monotonic()

    def line(self, name: str, text: str) -> None:
        print(f"longcat up: {name:<11s} {text}", file=sys.stderr, flush=True)

    def json(self, obj: dict) -> None:
        if self.as_json:
            print(json.dumps(obj), flush=True)

    def __call__(self, event: str, child=None, **kw) -> None:
        from longcat.stack.supervisor import describe_exit

        name = child.name if child is not None else ""
        if event == "model":
            self.line("model", f"{kw['model']} (resolving; the tiny model is built on first use)")
        elif event == "starting":
            p = child.p
            where = f"{p.address}" if name != "redis" else f"127.0.0.1:{p.port} (private, data {p.spec.data_dir})"
            self.line(name, f"starting on {where}, pid {child.pid}, log {p.log_path}")
        elif event == "serving":
            what = "PONG" if name.startswith(("redis", "sentinel")) else "SERVING"
            self.line(name, f"{what} after {kw['after_s']:.1f}s" + (f" (restart {child.restarts})"
                                                                    if kw.get("restarted") else ""))
            if kw.get("restarted"):
                self.json({"event": "restarted", "service": name, "pid": child.pid, "restarts": child.restarts})
        elif event == "exited":
            self.line(name, f"exited with {describe_exit(kw['returncode'])}; restarting in "
                            f"{kw['restart_in_s']:.1f}s (log {child.p.log_path})")
            self.json({"event": "exited", "service": name, "returncode": kw["returncode"],
                       "restart_in_s": kw["restart_in_s"]})
        elif event == "restarting":
            self.line(name, f"restarting (restart {child.restarts}), pid {child.pid}")
        elif event == "stopping":
            self.line(name, f"stopping (SIGTERM to pid {child.pid})")
        elif event == "killed":
            self.line(name, f"did not stop in time: SIGKILL to pid {child.pid}")
        elif event == "stopped":
            self.line(name, f"stopped ({describe_exit(kw['returncode'])})")


def run(args) -> int:
    from longcat.stack.local import LocalStack
    from longcat.stack.supervisor import Interrupted, StartupFailed

    printer = Printer(args.json)
    stack = LocalStack(options(args), report=printer, start_timeout_s=args.start_timeout_s,
                       stop_timeout_s=args.stop_timeout_s)

    def on_signal(signum, _frame):  # flags only: no locks, no printing (the main thread may hold them)
        if stack.supervisor is None:  # still checking / resolving the model: nothing runs yet
            raise KeyboardInterrupt
        stack.request_stop()          # a second signal: SIGKILL what is still running

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    code = 0
    try:
        stack.prepare()
        try:
            stack.start()
        except Interrupted:
            printer.line("", "stopping: interrupted while starting")
            code = 130
        except StartupFailed as exc:
            printer.line("", f"startup failed: {exc.summary}; stopping what was started")
            raise
        else:
            info = stack.describe()
            if args.json:
                info["redis"] = {**info["redis"], "url": redact_url(info["redis"]["url"])}  # no password out
                printer.json({"event": "up", "ok": True, **info})
            else:
                redis = {**info["redis"], "url": redact_url(info["redis"]["url"])}
                print(f"LongCat stack up in {time.monotonic() - printer.t0:.0f}s: gateway {info['gateway']}\n"
                      f"  export LONGCAT_GATEWAY={info['gateway']}\n"
                      + (f"  http {info['http']}   (API docs {info['http']}/docs)\n" if info.get("http") else "") +
                      f"  redis {redis['url']} ({'private, pid %s' % redis['pid'] if redis['owned'] else 'private: primary, replica, 3 Sentinels' if info.get('redis_ha') else 'existing'})"
                      f", model {info['model']}\n"
                      f"  logs {stack.plan.logs_dir}   (Ctrl-C stops everything)", flush=True)
            stack.run()
            printer.line("", "stopping")
    finally:
        stack.stop()
        for s, h in previous.items():
            signal.signal(s, h)
    if stack.supervisor is not None:
        printer.line("", "stopped")
        printer.json({"event": "stopped", "ok": code == 0})
    return code
