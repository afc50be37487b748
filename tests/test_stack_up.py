"""``longcat up``: the plan (pure), the checks made before anything starts, and the whole stack as a real
subprocess (private Redis, encoder, denoiser, trainer, gateway): health, an Edit through the gateway, a
killed denoiser restarted, SIGTERM stopping everything, and an existing Redis used but left running."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from longcat.errors import InvalidArgument
from longcat.launch import ROOT, free_port
from longcat.rpc.channel import health_status, make_channel
from longcat.stack.plan import StackOptions, make_plan, port_free
from longcat.stack.supervisor import RestartPolicy
from longcat.v1 import edit_pb2, edit_pb2_grpc

SAMPLE = (ROOT / "examples" / "sample.png").read_bytes()


# --- the plan ------------------------------------------------------------------------------------------------

def test_plan_ports_paths_and_flags(tmp_path):
    plan = make_plan(StackOptions(workers=3, data_dir=tmp_path / "d", redis_url="redis://127.0.0.1:7000/2"))
    by = {s.name: s for s in plan.services}
    assert list(by) == ["encoder", "denoiser-0", "denoiser-1", "denoiser-2", "trainer", "gateway"]
    # Denoisers take the next numbers the plan leaves free (50063 is the trainer's).
    assert [by[f"denoiser-{i}"].port for i in range(3)] == [50062, 50064, 50065]
    assert (by["gateway"].port, by["encoder"].port, by["trainer"].port) == (50051, 50061, 50063)
    assert [by[n].metrics_port for n in by] == [9461, 9462, 9464, 9465, 9463, 9460]
    data = (tmp_path / "d").absolute()
    for s in plan.services:
        assert s.log_path == data / "logs" / f"{s.name}.log"
        if s.kind != "encoder":
            flags = dict(zip(s.args[::2], s.args[1::2]))
            assert flags["--redis-url"] == "redis://127.0.0.1:7000/2"
            assert flags["--adapter-dir"] == str(data / "adapters")
            assert flags["--blob-dir"] == str(data / "blobs")
        if s.kind in ("denoiser", "trainer"):
            assert "--encoder" in s.args and s.args[s.args.index("--encoder") + 1] == "127.0.0.1:50061"
        if s.kind in ("gateway", "trainer"):
            assert s.args[s.args.index("--data-root") + 1] == str(data / "data")
            assert s.args[s.args.index("--output-root") + 1] == str(data / "outputs")
    assert plan.redis.port == 7000 and plan.redis.data_dir == data / "redis"
    no_trainer = make_plan(StackOptions(trainer=False, metrics_port=0, data_dir=tmp_path))
    assert [s.name for s in no_trainer.services] == ["encoder", "denoiser-0", "gateway"]
    assert all(s.metrics_port == 0 for s in no_trainer.services)


def test_plan_refuses_clashing_ports(tmp_path):
    with pytest.raises(InvalidArgument, match="both listen on port 50061"):
        make_plan(StackOptions(port=50061, data_dir=tmp_path))
    with pytest.raises(InvalidArgument, match="Redis URL's port"):
        make_plan(StackOptions(redis_url="redis://127.0.0.1:50051/0", data_dir=tmp_path))
    with pytest.raises(InvalidArgument, match="workers"):
        make_plan(StackOptions(workers=0, data_dir=tmp_path))


def test_restart_backoff_doubles_up_to_a_cap():
    p = RestartPolicy(initial_s=1, max_s=10)
    assert [p.delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]


class _Cmd:
    """The surface the supervisor needs from a ServiceProcess, around any command."""

    def __init__(self, name: str, cmd: list[str], log_dir: Path):
        self.name, self.cmd, self.address = name, cmd, ""
        self.log_path = log_dir / f"{name}.log"
        self.proc = None

    def spawn(self):
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self.proc


def test_supervisor_restarts_with_backoff_and_stops_in_tiers(tmp_path):
    from longcat.stack.supervisor import Child, StartupFailed, Supervisor

    events = []
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    a, b = _Cmd("a", sleep, tmp_path), _Cmd("b", sleep, tmp_path)
    sup = Supervisor([Child(a, 1, lambda: True), Child(b, 0, lambda: True)],
                     report=lambda ev, c, **kw: events.append((ev, c.name, kw)),
                     policy=RestartPolicy(initial_s=0.2, max_s=0.4, stable_s=60), poll_s=0.02)
    sup.start_group(sup.children, timeout=30)
    first = a.proc.pid
    for n in (1, 2, 3):   # crash after crash: 0.2 s, 0.4 s, 0.4 s
        a.proc.kill()
        while not (sup.children[0].state == "serving" and a.proc.pid != first):
            sup.tick()
            time.sleep(0.02)
        first = a.proc.pid
    delays = [kw["restart_in_s"] for ev, name, kw in events if ev == "exited"]
    assert delays == [0.2, 0.4, 0.4] and sup.children[0].restarts == 3
    assert "restarting a (restart 3)" in a.log_path.read_text()
    sup.stop_all()
    assert a.proc.poll() is not None and b.proc.poll() is not None
    stops = [name for ev, name, _ in events if ev == "stopping"]
    assert stops == ["b", "a"]   # tier 0 first

    bad = _Cmd("bad", [sys.executable, "-c", "print('no such model'); raise SystemExit(3)"], tmp_path)
    bad.spawn = lambda: setattr(bad, "proc", subprocess.Popen(bad.cmd, stdout=open(bad.log_path, "wb"))) or bad.proc
    sup = Supervisor([Child(bad, 0, lambda: False)], poll_s=0.02)
    with pytest.raises(StartupFailed, match="bad exited with exit code 3 while starting(.|\n)*no such model"):
        sup.start_group(sup.children, timeout=30)


# --- helpers ------------------------------------------------------------------------------------------------

def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LONGCAT_") or k == "LONGCAT_CACHE"}
    return {**env, **extra}


def _up_cmd(data_dir: Path, ports: dict, *extra: str, as_json: bool = True) -> list[str]:
    return [sys.executable, "-m", "longcat.cli.main", "up", *(["--json"] if as_json else []),
            "--data-dir", str(data_dir),
            "--port", str(ports["gateway"]), "--encoder-port", str(ports["encoder"]),
            "--denoiser-port", str(ports["denoiser"]), "--trainer-port", str(ports["trainer"]),
            "--http-port", str(ports["http"]), "--metrics-port", "0", *extra]


def _free_ports() -> dict:
    ports: dict = {}
    while len(set(ports.values())) < 6:
        ports = {name: free_port() for name in ("gateway", "encoder", "denoiser", "trainer", "redis", "http")}
    return ports


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie nobody reaped yet is gone too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _procs_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention ``text`` (a test's own data dir or port)."""
    out = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            cmd = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd and not _gone(int(cmdline.parent.name)):
            out.append(cmd)
    return out


def _children(pid: int) -> set[int]:
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.add(int(stat.parent.name))
    return out


class Up:
    """``longcat up --json`` as a subprocess; stdout's JSON lines arrive on a queue."""

    def __init__(self, cmd: list[str], data_dir: Path):
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.stderr_path = data_dir.parent / f"{data_dir.name}-up.stderr"
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                                     stderr=open(self.stderr_path, "wb"), text=True)
        self.events: queue.Queue = queue.Queue()
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.info: dict = {}
        self.pids: set[int] = set()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            self.events.put(json.loads(line))

    def next_event(self, event: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                ev = self.events.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None and self.events.empty():
                    break
                continue
            if ev.get("event") == event:
                return ev
        raise AssertionError(f"no {event!r} event within {timeout:.0f}s\n{self.diagnostics()}")

    def wait_up(self, timeout: float = 240.0) -> dict:
        self.info = self.next_event("up", timeout)
        self.pids |= {s["pid"] for s in self.info["services"].values()}
        if self.info["redis"]["pid"]:
            self.pids.add(self.info["redis"]["pid"])
        return self.info

    def diagnostics(self) -> str:
        parts = ["--- longcat up stdout:\n" + "".join(self.lines)[-3000:],
                 f"--- longcat up (rc {self.proc.poll()}) stderr:\n"
                 + self.stderr_path.read_text(errors="replace")[-4000:]]
        for log in sorted((self.data_dir / "logs").glob("*.log")):
            parts.append(f"--- {log.name}:\n" + log.read_text(errors="replace")[-1500:])
        return "\n".join(parts)

    def terminate(self, timeout: float = 120.0, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"longcat up did not stop within {timeout}s\n{self.diagnostics()}") from None

    def cleanup(self) -> None:
        """Whatever a failed test left: SIGKILL the supervisor (its children get SIGTERM) and every pid seen."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        for pid in self.pids:
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)


def _edit(address: str, prompt: str = "make the sky purple") -> edit_pb2.EditResult:
    channel = make_channel(address)
    try:
        return edit_pb2_grpc.EditServiceStub(channel).Edit(
            edit_pb2.EditRequest(image=SAMPLE, prompt=prompt, width=64, height=64, num_inference_steps=2, seed=3),
            timeout=180)
    finally:
        channel.close()


# --- checks before anything starts ----------------------------------------------------------------------------

def test_a_taken_port_is_refused_before_anything_starts(tmp_path):
    ports = _free_ports()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports["encoder"]))
        holder.listen()
        data = tmp_path / "stack"
        cmd = _up_cmd(data, ports, "--redis-url", f"redis://127.0.0.1:{ports['redis']}/0", as_json=False)
        out = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert f"port {ports['encoder']} (encoder gRPC) is already in use" in lines[0] and "--encoder-port" in lines[0]
    # Nothing started: no private Redis on its port, no logs, no lock.
    assert port_free("127.0.0.1", ports["redis"])
    assert not (data / "logs").exists() and not (data / "up.lock").exists()


def test_missing_redis_server_says_how_to_install_it(tmp_path):
    ports = _free_ports()
    cmd = _up_cmd(tmp_path / "stack", ports, "--redis-url", f"redis://127.0.0.1:{ports['redis']}/0")
    out = subprocess.run(cmd, cwd=ROOT, env=_env(PATH=str(tmp_path)), capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    err = json.loads(out.stdout.strip().splitlines()[-1])
    assert err["ok"] is False and "redis-server is not installed" in err["error"]
    assert "apt-get install -y redis-server" in err["error"] and "--redis-url" in err["error"]


def test_a_service_that_cannot_start_fails_the_start_and_stops_the_rest(tiny_model_path, tmp_path):
    ports = _free_ports()
    data = tmp_path / "stack"
    up = Up(_up_cmd(data, ports, "--redis-url", f"redis://127.0.0.1:{ports['redis']}/0", "--no-trainer",
                    "--service-arg=encoder:--no-such-flag"), data)
    try:
        assert up.proc.wait(120) != 0
        err = json.loads(up.lines[-1])
        assert err["ok"] is False and "encoder exited with exit code 2 while starting" in err["error"]
        assert "--no-such-flag" in err["error"]   # the tail of its log
        assert port_free("127.0.0.1", ports["redis"]) and port_free("127.0.0.1", ports["gateway"])
        assert _procs_mentioning(str(data)) == []
    finally:
        up.cleanup()


# --- the whole stack ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stack(tiny_model_path, tmp_path_factory):
    """``longcat up`` on the default (tiny) model with a private Redis on a free port."""
    ports = _free_ports()
    data = tmp_path_factory.mktemp("up") / "stack"
    up = Up(_up_cmd(data, ports, "--redis-url", f"redis://127.0.0.1:{ports['redis']}/0"), data)
    try:
        up.wait_up()
        yield up
    finally:
        up.cleanup()


@pytest.mark.slow
def test_every_service_is_serving(stack, tiny_model_path):
    info = stack.info
    assert set(info["services"]) == {"encoder", "denoiser-0", "trainer", "gateway"}
    assert info["model"] == tiny_model_path
    assert info["redis"]["owned"] and info["redis"]["data_dir"] == str(stack.data_dir / "redis")
    assert redis.Redis.from_url(info["redis"]["url"]).ping()
    assert redis.Redis.from_url(info["redis"]["url"]).config_get("appendonly")["appendonly"] == "yes"
    for name, svc in info["services"].items():
        ch = make_channel(svc["address"])
        assert health_status(ch) == "SERVING", name
        ch.close()
        assert (stack.data_dir / "logs" / f"{name}.log").exists()
    # Every process is a child of the supervisor, and the state file lists them.
    assert stack.pids <= _children(stack.proc.pid)
    assert json.loads((stack.data_dir / "stack.json").read_text())["gateway"] == info["gateway"]


@pytest.mark.slow
def test_the_gateway_answers_http_at_the_url_up_reports(stack):
    import httpx

    url = stack.info["http"]
    assert url.startswith("http://127.0.0.1:")
    assert httpx.get(url + "/readyz", timeout=30).json() == {"status": "ready"}
    assert httpx.get(url + "/v1/adapters", timeout=30).status_code == 200


@pytest.mark.slow
def test_an_edit_goes_through_the_gateway(stack):
    result = _edit(stack.info["gateway"])
    assert (result.width, result.height, result.seed) == (64, 64, 3) and result.image[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_a_killed_denoiser_is_restarted(stack):
    old = stack.info["services"]["denoiser-0"]["pid"]
    os.kill(old, signal.SIGKILL)
    exited = stack.next_event("exited", 30)
    assert exited["service"] == "denoiser-0" and exited["returncode"] == -signal.SIGKILL
    restarted = stack.next_event("restarted", 120)
    assert restarted["service"] == "denoiser-0" and restarted["pid"] != old
    stack.pids.add(restarted["pid"])
    assert _edit(stack.info["gateway"], "after the restart").image
    assert "restarting denoiser-0" in (stack.data_dir / "logs" / "denoiser-0.log").read_text()
    state = json.loads((stack.data_dir / "stack.json").read_text())
    assert state["services"]["denoiser-0"]["pid"] == restarted["pid"]


@pytest.mark.slow
def test_sigterm_stops_every_child_and_the_private_redis(stack):
    redis_port = int(stack.info["redis"]["url"].rsplit(":", 1)[1].split("/")[0])
    live = {pid for pid in stack.pids if not _gone(pid)}
    assert len(live) == 5  # redis, encoder, denoiser (restarted), trainer, gateway
    assert stack.terminate() == 0, stack.diagnostics()
    deadline = time.monotonic() + 10
    while not all(_gone(pid) for pid in stack.pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [pid for pid in stack.pids if not _gone(pid)] == []
    assert _procs_mentioning(str(stack.data_dir)) == []
    assert port_free("127.0.0.1", redis_port)
    assert not (stack.data_dir / "stack.json").exists()
    err = stack.stderr_path.read_text()
    order = [err.index(f"{name:<11s} stopping") for name in ("gateway", "denoiser-0", "encoder", "redis")]
    assert order == sorted(order)   # reverse start order, the private Redis last
    assert "did not stop in time" not in err   # no SIGKILL was needed


@pytest.mark.slow
def test_an_existing_redis_is_used_and_left_running(tiny_model_path, tmp_path):
    from tests.redis_proc import RedisProcess

    ext = RedisProcess(tmp_path / "ext-redis", appendonly=False)
    (tmp_path / "ext-redis").mkdir()
    ext.start()
    up = None
    try:
        ports = _free_ports()
        data = tmp_path / "stack"
        up = Up(_up_cmd(data, ports, "--redis-url", ext.url, "--no-trainer", "--namespace", "mine"), data)
        info = up.wait_up()
        assert info["redis"] == {"url": ext.url, "owned": False, "pid": None, "data_dir": None, "log": None}
        assert set(info["services"]) == {"encoder", "denoiser-0", "gateway"}
        assert _edit(info["gateway"]).image
        assert ext.client().keys("mine:*")     # the jobs went through that Redis
        assert up.terminate(sig=signal.SIGINT) == 0, up.diagnostics()   # Ctrl-C
        assert all(_gone(pid) for pid in up.pids)
        assert ext.proc.poll() is None and ext.client().ping()
        assert not (data / "redis").exists()
    finally:
        if up is not None:
            up.cleanup()
        ext.stop()
