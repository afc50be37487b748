"""Redis failover under load, on the real stack: ``longcat up --redis-ha`` (a primary, a replica and three
Sentinels from Debian's redis-server / redis-sentinel), the encoder, a denoiser, the trainer and a gateway,
all connected through ``redis+sentinel://``.

A stream of edit submissions, with edits running and one training job, while the primary is SIGKILLed;
Sentinel promotes the replica. What must hold: every call answers (a job, or UNAVAILABLE during the switch:
never INTERNAL, never a hang), every acknowledged job reaches exactly one terminal state, no request makes
two jobs, and the stack serves again (the time is measured and printed; the docs quote it).

Two gateways share the stack: one acknowledges only after a replica has the job (``--durable-ack-replicas
1``; nothing acknowledged may be lost), one acknowledges once the primary has it (the default; what it
lost is counted and printed, not asserted). LONGCAT_FAILOVER_LONG=1 runs a longer stream.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid

import grpc
import pytest

from longcat.api.keys import Keys
from longcat.client import LongCatClient
from longcat.jobs.connection import connect
from longcat.launch import ServiceProcess
from longcat.rpc.channel import make_channel
from longcat.stack.redis_ha import LocalRedisHA
from longcat.training.sample_data import write_pairs
from longcat.v1 import edit_pb2, edit_pb2_grpc
from tests.gateway_stack import request
from tests.test_stack_up import Up, _free_ports, _up_cmd

LONG = os.environ.get("LONGCAT_FAILOVER_LONG") == "1"
STREAM_S = 30.0 if LONG else 4.0          # submissions before the kill
AFTER_S = 20.0 if LONG else 4.0           # and after the stack serves again
DOWN_AFTER_MS = 1000
NS = "lc"
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")


class Submitter(threading.Thread):
    """Submits an edit every ``period`` s; a refused one is retried with its request_id (as a client would)
    until acknowledged. Records every answer's status code and when the stack answered again."""

    def __init__(self, stub, period: float = 0.15):
        super().__init__(daemon=True)
        self.stub, self.period = stub, period
        self.stop = threading.Event()
        self.acked: dict[str, str] = {}     # request_id -> job id
        self.codes: dict[str, int] = {}     # status code name -> count
        self.doubled: list[str] = []
        self.kill_at: float | None = None
        self.recovered_at: float | None = None

    def run(self) -> None:
        pending: list[str] = []
        seeds: dict[str, int] = {}  # a retry sends the same request (another payload: ALREADY_EXISTS)
        while not self.stop.is_set():
            rid = pending.pop(0) if pending else uuid.uuid4().hex
            seed = seeds.setdefault(rid, len(seeds))
            try:
                job = self.stub.SubmitEdit(request(size=64, steps=2, request_id=rid, seed=seed), timeout=20)
                code = "OK"
                if rid in self.acked and self.acked[rid] != job.id:
                    self.doubled.append(rid)  # a retried request made a second job
                elif rid not in self.acked and len(self.acked) % 5 == 0:
                    pending.append(rid)       # every fifth request is sent twice: the same job must answer
                self.acked[rid] = job.id
                if self.kill_at is not None and self.recovered_at is None:
                    self.recovered_at = time.monotonic()
            except grpc.RpcError as err:
                code = err.code().name
                if code == "UNAVAILABLE":
                    pending.append(rid)
            self.codes[code] = self.codes.get(code, 0) + 1
            self.stop.wait(self.period)


def _config(steps: int) -> dict:
    return {"model_type": "lora", "model_family": "longcat_image", "model_flavour": "edit",
            "base_model_precision": "no_change", "learning_rate": 5e-3, "lr_warmup_steps": 1, "seed": 1,
            "max_train_steps": steps, "train_batch_size": 1, "output_dir": f"runs/{uuid.uuid4().hex[:6]}",
            "lora_rank": 4, "checkpointing_steps": 5, "checkpoints_total_limit": 1, "validation_steps": 10_000,
            "aspect_bucket_alignment": 64}


def _dataloader() -> list:
    return [{"id": "edit-images", "type": "local", "instance_data_dir": "ds/edits", "caption_strategy": "textfile",
             "resolution": 64, "cache_dir_vae": "cache/ds/edit", "conditioning_data": ["ref-images"]},
            {"id": "ref-images", "type": "local", "instance_data_dir": "ds/refs", "caption_strategy": None,
             "resolution": 64, "cache_dir_vae": "cache/ds/ref"}]


@pytest.fixture(scope="module")
def ha_stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("ha")
    data = root / "stack"
    write_pairs(data / "data" / "ds", count=4, size=(64, 64), seed=0)
    ports = _free_ports()
    up = Up(_up_cmd(data, ports, "--redis-ha", "--redis-ha-down-after-ms", str(DOWN_AFTER_MS),
                    "--service-arg=gateway:--durable-ack-replicas=1",
                    "--service-arg=denoiser:--heartbeat-timeout-s=3",
                    "--service-arg=trainer:--lease-ttl-s=3", "--service-arg=trainer:--reaper-period-s=1"), data)
    fast = None
    try:
        info = up.wait_up(300)
        ha = info["redis_ha"]
        up.pids |= {n["pid"] for n in ha["nodes"].values()}
        # A second gateway on the same stack, acknowledging as soon as the primary has a job (the default).
        fast = ServiceProcess("gateway", ["--redis-url", ha["url"], "--namespace", NS, "--adapter-dir",
                                          info["adapter_dir"], "--data-root", info["data_root"], "--output-root",
                                          info["output_root"], "--metrics-port", "0"], root / "logs")
        fast.wait_serving(120)
        yield {"up": up, "info": info, "fast": fast, "ha": LocalRedisHA(ha["root"]).prepare()}
    finally:
        if fast is not None:
            fast.stop(signal.SIGTERM, timeout=30)
        try:
            up.terminate(120)
        finally:
            up.cleanup()


def _failover_run(ha_stack, gateway: str) -> dict:
    ha: LocalRedisHA = ha_stack["ha"]
    ha.wait_ready(60)  # after an earlier run: the old primary is back, as a replica, in sync
    client = LongCatClient(gateway, retries=10)
    stub = edit_pb2_grpc.EditServiceStub(make_channel(gateway))
    train = client.train(_config(30 if LONG else 12), _dataloader(), name=f"ha{uuid.uuid4().hex[:4]}",
                         upload="never")
    print(f"\ntraining job {train.id} state {edit_pb2.JobState.Name(train.state)}", flush=True)
    sub = Submitter(stub)
    sub.start()
    time.sleep(STREAM_S)
    primary = ha.primary()
    assert primary is not None
    pid = int(primary.client().info("server")["process_id"])  # the live one (the supervisor restarts nodes)
    acked_before_kill = len(sub.acked)
    # A lost node, not a restart: `longcat up` would restart the killed redis-server within a second (before
    # Sentinel decides), so its config is moved away until the replica has been promoted; then it returns
    # and Sentinel makes it a replica of the new primary.
    away = primary.conf.with_suffix(".away")
    primary.conf.rename(away)
    try:
        sub.kill_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = ha.primary()
            if now is not None and now.port != primary.port:
                break
            time.sleep(0.05)
        promoted_s = time.monotonic() - sub.kill_at
    finally:
        away.rename(primary.conf)
    deadline = time.monotonic() + 60
    while sub.recovered_at is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sub.recovered_at is not None, f"no submission was acknowledged within 60 s of the kill: {sub.codes}"
    recovery_s = sub.recovered_at - sub.kill_at
    time.sleep(AFTER_S)
    sub.stop.set()
    sub.join(60)
    assert not sub.is_alive(), "a submission hung"
    assert set(sub.codes) <= {"OK", "UNAVAILABLE"}, sub.codes  # never INTERNAL, never a deadline (hang)
    assert not sub.doubled, f"retried requests answered with another job: {sub.doubled}"
    assert ha.primary() is not None and ha.primary().port != primary.port, "Sentinel promoted no replica"

    # Every acknowledged job, read back from the new primary.
    r = connect(ha.url)
    keys = Keys(NS)
    lost, states, terminal_events = [], {}, {}

    def settle():
        for rid, job_id in sub.acked.items():
            state = r.hget(keys.job(job_id), "state")
            states[job_id] = state.decode() if state else None
        return all(s in TERMINAL for s in states.values() if s is not None)

    deadline = time.monotonic() + (600 if LONG else 90)
    while not settle() and time.monotonic() < deadline:
        time.sleep(0.5)
    lost = [j for j, s in states.items() if s is None]
    for job_id in list(states) + [train.id]:
        events = r.xrange(keys.events(job_id))
        terminal_events[job_id] = [f[b"state"].decode() for _, f in events if f.get(b"kind") == b"terminal"]
    final_train = client.get_job(train.id)
    # A training task that met the switch itself (MasterNotFoundError mid-run) resumes only once its lease has
    # lapsed and the reaper hands it on: up to about two minutes on a loaded 2-core machine. What is asserted is
    # exactly one terminal state, not how fast training recovers.
    deadline = time.monotonic() + (600 if LONG else 240)
    while final_train.state not in (edit_pb2.SUCCEEDED, edit_pb2.FAILED, edit_pb2.CANCELLED) and \
            time.monotonic() < deadline:
        time.sleep(1)
        final_train = client.get_job(train.id)
    terminal_events[train.id] = [f[b"state"].decode() for _, f in r.xrange(keys.events(train.id))
                                 if f.get(b"kind") == b"terminal"]
    # One job per request: no edit job in the store (refused-then-retried ones included) shares a request_id.
    from longcat.jobs.store import JobStore

    request_ids = [v.request_id for v in JobStore(r, keys).list(None, kind="edit", limit=100_000)
                   if v.request_id in sub.acked]
    client.close()
    r.close()
    return {"recovery_s": recovery_s, "promoted_s": promoted_s, "acked": len(sub.acked), "acked_before_kill": acked_before_kill,
            "lost": lost, "states": states, "terminal_events": terminal_events, "codes": sub.codes,
            "train": final_train, "request_ids": request_ids}


def _report(name: str, out: dict) -> None:
    summary = {"run": name, "promoted_s": round(out["promoted_s"], 2), "recovery_s": round(out["recovery_s"], 2), "acknowledged": out["acked"],
               "lost": len(out["lost"]), "codes": out["codes"], "training": edit_pb2.JobState.Name(out["train"].state)}
    print("\nFAILOVER " + json.dumps(summary))


@pytest.mark.slow
def test_failover_with_durable_ack_loses_nothing_acknowledged(ha_stack):
    out = _failover_run(ha_stack, ha_stack["info"]["gateway"])
    _report("durable-ack", out)
    assert not out["lost"], f"acknowledged jobs lost with durable acknowledgement: {out['lost']}"
    assert out["acked"] > out["acked_before_kill"] > 0
    for job_id, states in out["terminal_events"].items():
        assert len(states) == 1, f"job {job_id}: terminal events {states} (exactly one expected)"
    assert all(s == "SUCCEEDED" for s in out["states"].values()), out["states"]
    assert out["train"].state == edit_pb2.SUCCEEDED, out["train"].reason
    assert len(out["request_ids"]) == len(set(out["request_ids"])), "a request made two jobs"


@pytest.mark.slow
def test_failover_with_fast_ack_counts_what_it_loses(ha_stack):
    out = _failover_run(ha_stack, ha_stack["fast"].address)
    _report("fast-ack", out)
    # What must hold even without durable acknowledgement: no job that exists ends twice or hangs; no
    # request makes two jobs. Lost acknowledged jobs are counted (printed above), not asserted.
    for job_id, states in out["terminal_events"].items():
        if out["states"].get(job_id) is not None or job_id == out["train"].id:
            assert len(states) <= 1, f"job {job_id}: terminal events {states}"
    assert all(s in TERMINAL for s in out["states"].values() if s is not None), out["states"]
    assert out["train"].state in (edit_pb2.SUCCEEDED, edit_pb2.FAILED)
    assert len(out["request_ids"]) == len(set(out["request_ids"])), "a request made two jobs"
