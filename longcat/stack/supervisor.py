"""Supervise the stack's child processes: start them in groups and wait for their health checks, restart
the ones that crash (with exponential backoff), stop them all in tiers (reverse start order).

Everything runs on the calling (main) thread: children are started there, so that on Linux each one can
ask the kernel to SIGTERM it if the supervisor itself dies (``PR_SET_PDEATHSIG``, set by ``setpriv``,
follows the thread that forked). Children run in their own session, so a Ctrl-C in the terminal reaches only
the supervisor, which then stops them in order. Signal handlers only call :meth:`Supervisor.request_stop`.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable

from longcat.errors import LongCatError


class StartupFailed(LongCatError):
    code = "UNAVAILABLE"

    @property
    def summary(self) -> str:
        """The first line, without the log tail."""
        return str(self).split("; the log ends with", 1)[0].splitlines()[0]


class Interrupted(LongCatError):
    code = "CANCELLED"


@dataclass
class RestartPolicy:
    initial_s: float = 1.0    # first restart after this long
    max_s: float = 30.0       # doubling up to this
    stable_s: float = 60.0    # SERVING this long forgives earlier crashes (the next restart is quick again)

    def delay(self, failures: int) -> float:
        return min(self.max_s, self.initial_s * 2 ** max(0, failures - 1))


def child_popen_kwargs() -> dict:
    """Own session: a Ctrl-C in the terminal reaches the supervisor only, which stops the children in order."""
    return {"start_new_session": True}


def child_command_prefix() -> list[str]:
    """``setpriv --pdeathsig TERM --`` where util-linux's setpriv can (Linux): the kernel SIGTERMs the child
    when the supervisor dies, even by SIGKILL. (Not a ``preexec_fn``: forking a process that runs gRPC
    threads with one breaks a few percent of children before they exec.)"""
    if not sys.platform.startswith("linux"):
        return []
    path = shutil.which("setpriv")
    if path is None:
        return []
    try:
        ok = subprocess.run([path, "--pdeathsig", "TERM", "--", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    return [path, "--pdeathsig", "TERM", "--"] if ok.returncode == 0 else []


def grpc_health_check(address: str) -> Callable[[], bool]:
    """A check that is true once the server's overall health is SERVING (short reconnect backoff, so a
    restarted server is seen at once)."""
    import grpc

    from longcat.rpc.channel import health_status

    channel = grpc.insecure_channel(address, options=[("grpc.initial_reconnect_backoff_ms", 100),
                                                      ("grpc.min_reconnect_backoff_ms", 100),
                                                      ("grpc.max_reconnect_backoff_ms", 500)])

    def check() -> bool:
        return health_status(channel, timeout=1.0) == "SERVING"

    check.close = channel.close  # type: ignore[attr-defined]
    return check


class Child:
    """One supervised process. ``proc`` is a ServiceProcess or a PrivateRedis: anything with ``name``,
    ``spawn()``, ``proc`` (a Popen), ``address`` and ``log_path``."""

    def __init__(self, proc, tier: int, healthy: Callable[[], bool]):
        self.p = proc
        self.name = proc.name
        self.tier = tier
        self.healthy = healthy
        self.state = "new"          # new, starting, serving, backoff, stopping, stopped
        self.failures = 0           # crashes since it was last stable
        self.restarts = 0
        self.ever_served = False
        self.started_at = self.serving_since = self.restart_at = 0.0

    @property
    def pid(self) -> int | None:
        return self.p.proc.pid if self.p.proc is not None else None

    def alive(self) -> bool:
        return self.p.proc is not None and self.p.proc.poll() is None

    def returncode(self) -> int | None:
        return None if self.p.proc is None else self.p.proc.poll()

    def signal(self, sig: int) -> None:
        if self.alive():
            try:
                self.p.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.p.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def note(self, text: str) -> None:
        """A line in the child's own log file, so restarts are visible where its output is."""
        try:
            with open(self.p.log_path, "a") as f:
                f.write(f"=== longcat up {time.strftime('%Y-%m-%dT%H:%M:%S')}: {text}\n")
        except OSError:
            pass

    def close(self) -> None:
        log = getattr(self.p, "_log", None)
        if log is not None:
            log.close()
        getattr(self.healthy, "close", lambda: None)()


Report = Callable[..., None]   # report(event, child, **fields)


class Supervisor:
    def __init__(self, children: list[Child], report: Report | None = None, policy: RestartPolicy | None = None,
                 stop_timeout_s: float = 60.0, poll_s: float = 0.2, starting_stop_s: float = 5.0):
        self.children = list(children)
        self.report = report or (lambda *a, **k: None)
        self.policy = policy or RestartPolicy()
        self.stop_timeout_s = stop_timeout_s
        self.starting_stop_s = starting_stop_s
        self.poll_s = poll_s
        # Plain flags, not threading.Event: a signal handler that sets an Event can deadlock on its lock.
        self.stopping = False
        self.kill_now = False
        self._starting_up = False

    # --- control (safe from signal handlers) ---------------------------------------------------------------

    def request_stop(self) -> None:
        """First call: stop cleanly. A second one: SIGKILL whatever is still running at once."""
        if self.stopping:
            self.kill_now = True
        self.stopping = True

    # --- starting --------------------------------------------------------------------------------------------

    def _spawn(self, c: Child) -> None:
        c.p.spawn()
        c.state, c.started_at = "starting", time.monotonic()

    def start_group(self, group: list[Child], timeout: float) -> None:
        """Start ``group`` at once and wait until every one is healthy. A child that exits first, a timeout
        or a stop request raises (the caller stops what was started)."""
        self._starting_up = True
        try:
            for c in group:
                self._spawn(c)
                self.report("starting", c)
            deadline = time.monotonic() + timeout
            while any(c.state != "serving" for c in group):
                if self.stopping:
                    raise Interrupted("stopped while starting")
                if time.monotonic() > deadline:
                    late = [c.name for c in group if c.state != "serving"]
                    raise StartupFailed(f"{', '.join(late)} not healthy after {timeout:.0f}s "
                                        f"(logs: {', '.join(str(c.p.log_path) for c in group if c.name in late)})")
                self.tick()
                time.sleep(self.poll_s)
        finally:
            self._starting_up = False

    # --- running ---------------------------------------------------------------------------------------------

    def tick(self) -> None:
        now = time.monotonic()
        for c in self.children:
            if c.state in ("starting", "serving") and not c.alive():
                rc = c.returncode()
                if self._starting_up and not c.ever_served:
                    raise StartupFailed(f"{c.name} exited with {_describe(rc)} while starting (log {c.p.log_path}); "
                                        f"the log ends with:\n{c.log_tail()}")
                c.failures += 1
                delay = self.policy.delay(c.failures)
                c.state, c.restart_at = "backoff", now + delay
                c.note(f"{c.name} exited with {_describe(rc)}; restarting in {delay:.1f}s")
                self.report("exited", c, returncode=rc, restart_in_s=delay)
            elif c.state == "backoff" and now >= c.restart_at:
                c.restarts += 1
                c.note(f"restarting {c.name} (restart {c.restarts})")
                self._spawn(c)
                self.report("restarting", c)
            elif c.state == "starting":
                if c.healthy():
                    c.state, c.serving_since = "serving", time.monotonic()
                    first = not c.ever_served
                    c.ever_served = True
                    self.report("serving", c, after_s=c.serving_since - c.started_at, restarted=not first)
            elif c.state == "serving" and c.failures and now - c.serving_since >= self.policy.stable_s:
                c.failures = 0

    def run(self) -> None:
        """Supervise until :meth:`request_stop` (then return; the caller calls :meth:`stop_all`)."""
        while not self.stopping:
            self.tick()
            time.sleep(self.poll_s)

    # --- stopping --------------------------------------------------------------------------------------------

    def stop_all(self) -> None:
        """SIGTERM tier by tier (lowest first), wait up to ``stop_timeout_s`` per tier, SIGKILL stragglers.
        A child still starting has no work in flight to finish: it gets ``starting_stop_s`` at most."""
        self.stopping = True
        for tier in sorted({c.tier for c in self.children}):
            group = [c for c in self.children if c.tier == tier]
            live = [c for c in group if c.alive()]
            now = time.monotonic()
            deadline = {}
            for c in live:
                grace = self.stop_timeout_s if c.state == "serving" else min(self.stop_timeout_s,
                                                                             self.starting_stop_s)
                deadline[c.name] = now + grace
                c.state = "stopping"
                c.signal(signal.SIGTERM)
                self.report("stopping", c)
            while not self.kill_now:
                waiting = [c for c in live if c.alive() and time.monotonic() < deadline[c.name]]
                if not waiting:
                    break
                time.sleep(0.05)
            for c in live:
                if c.alive():
                    c.signal(signal.SIGKILL)
                    self.report("killed", c)
                try:
                    c.p.proc.wait(10)
                except subprocess.TimeoutExpired:
                    pass
                self.report("stopped", c, returncode=c.returncode())
            for c in group:
                c.state = "stopped"
                c.close()

    def pids(self) -> dict[str, int | None]:
        return {c.name: c.pid for c in self.children}


def _describe(rc: int | None) -> str:
    if rc is None:
        return "no exit code"
    if rc < 0:
        try:
            return f"signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"signal {-rc}"
    return f"exit code {rc}"


describe_exit = _describe
