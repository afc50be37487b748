"""A bounded chaos run on a real local stack (loopback only): Redis (AOF, ``appendfsync everysec`` as
``longcat up`` and the deploy ship it), the encoder, two denoiser workers, a trainer and a gateway, under a
stream of edits and one training job, while a seeded schedule SIGKILLs denoisers, the trainer and Redis and
starts them again on the same ports (a denoiser and the trainer under the same ``--worker-id``, as a
restarted container keeps its pod name).

Shared by tests/test_chaos.py (CI: ~a minute) and bench/chaos.py (longer, prints the figures). What is
checked afterwards (:meth:`Chaos.verdict`): every acknowledged job reaches exactly one terminal state (one
terminal event in its event stream), every SUCCEEDED edit has its PNG (no result lost), no request_id made
two jobs, the training job re-ran no more steps after a fault than its checkpoint interval, and the gateway's
memory stayed flat.
"""

from __future__ import annotations

import json
import random
import signal
import statistics
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import redis

from longcat.client import LongCatClient
from longcat.launch import ServiceProcess, free_port
from longcat.rpc.channel import make_channel
from longcat.training.sample_data import write_pairs
from longcat.v1 import edit_pb2, edit_pb2_grpc
from tests.gateway_stack import request
from tests.redis_proc import RedisProcess

NS = "chaos"
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")
CHECKPOINT_STEPS = 4


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _tid(i: int) -> str:
    return "chaos-trainer" if i == 0 else f"chaos-trainer-{i}"


def _pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


@dataclass
class Fault:
    target: str            # denoiser-0, denoiser-1, trainer, redis
    at: float              # monotonic time of the SIGKILL
    held: list[str] = field(default_factory=list)   # jobs RUNNING on the victim at the kill
    peer_up: bool = True                            # a denoiser: the other one was serving at the kill
    recovered_s: float | None = None                # until every one of them continued (or the stack served)
    stepped_s: float | None = None                  # a trainer: until its job's next training step (or its end)


class Chaos:
    def __init__(self, root: Path, model: str, seed: int = 0, train_steps: int = 40, edit_deadline_s: float = 3600,
                 trainers: int = 1):
        self.root, self.model, self.rng = Path(root), model, random.Random(seed)
        self.logs = self.root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        (self.root / "redis").mkdir(exist_ok=True)
        self.data, self.out, self.adapters = self.root / "data", self.root / "out", self.root / "adapters"
        for d in (self.data, self.out, self.adapters):
            d.mkdir(exist_ok=True)
        write_pairs(self.data / "ds", count=4, size=(64, 64), seed=0)
        self.redis = RedisProcess(self.root / "redis", appendfsync="everysec").start()
        self.r = redis.Redis.from_url(self.redis.url, socket_timeout=5)
        shared = ["--redis-url", self.redis.url, "--namespace", NS, "--adapter-dir", str(self.adapters)]
        roots = ["--data-root", str(self.data), "--output-root", str(self.out)]
        self.encoder = self._svc("encoder", ["--model", model])
        self.denoisers = [self._svc("denoiser", ["--model", model, *shared, "--encoder", self.encoder.address,
                                                 "--worker-id", f"chaos-d{i}", "--max-attempts", "20",
                                                 "--max-inflight", "2"], tag=str(i)) for i in range(2)]
        self.trainers = [self._svc("trainer", ["--model", model, *shared, *roots, "--worker-id", _tid(i),
                                               "--max-attempts", "20"], tag=str(i)) for i in range(1, trainers)]
        self.trainer = self._svc("trainer", ["--model", model, *shared, *roots, "--worker-id", _tid(0),
                                             "--max-attempts", "20"])
        self.gateway = self._svc("gateway", ["--model", model, *shared, *roots])
        self.trainers.insert(0, self.trainer)
        for svc in (self.encoder, *self.denoisers, *self.trainers, self.gateway):
            svc.wait_serving(300)
        self.stub = edit_pb2_grpc.EditServiceStub(make_channel(self.gateway.address))
        self.client = LongCatClient(self.gateway.address, retries=20)
        self.train_steps = train_steps
        self.edit_deadline_s = edit_deadline_s  # the submit call's timeout: the job's deadline
        self.train_jobs: list[str] = []
        self.acked: dict[str, str] = {}     # request_id -> job id
        self.doubled: list[str] = []
        self.codes: dict[str, int] = {}
        self.faults: list[Fault] = []
        self.rss_kb: list[int] = []
        self.train_job: str = ""
        self._stop = threading.Event()

    def _svc(self, name: str, args: list[str], tag: str = "") -> ServiceProcess:
        return ServiceProcess(name, args, self.logs, port=free_port(),
                              log_path=self.logs / f"{name}{tag}.log")

    # --- load -------------------------------------------------------------------------------------------

    def _submitter(self, period: float) -> None:
        pending: list[str] = []
        seeds: dict[str, int] = {}  # a retry sends the same request (another payload: ALREADY_EXISTS)
        while not self._stop.is_set():
            rid = pending.pop(0) if pending else uuid.uuid4().hex
            seed = seeds.setdefault(rid, len(seeds))
            try:
                job = self.stub.SubmitEdit(request(size=64, steps=30, request_id=rid, seed=seed),
                                           timeout=self.edit_deadline_s)
                code = "OK"
                if rid in self.acked and self.acked[rid] != job.id:
                    self.doubled.append(rid)
                self.acked[rid] = job.id
            except grpc.RpcError as err:
                code = err.code().name
                pending.append(rid)  # a client retries with the same request_id until acknowledged
            self.codes[code] = self.codes.get(code, 0) + 1
            self._stop.wait(period)

    def _sample_rss(self) -> None:
        while not self._stop.wait(1.0):
            self.rss_kb.append(_rss_kb(self.gateway.pid))

    def start_training(self) -> None:
        config = {"model_type": "lora", "model_family": "longcat_image", "model_flavour": "edit",
                  "base_model_precision": "no_change", "learning_rate": 5e-3, "lr_warmup_steps": 1, "seed": 1,
                  "max_train_steps": self.train_steps, "train_batch_size": 1, "output_dir": "runs/chaos",
                  "lora_rank": 4, "checkpointing_steps": CHECKPOINT_STEPS, "checkpoints_total_limit": 1,
                  "validation_steps": 100_000, "num_validation_images": 0, "aspect_bucket_alignment": 64}
        loader = [{"id": "edit-images", "type": "local", "instance_data_dir": "ds/edits",
                   "caption_strategy": "textfile", "resolution": 64, "cache_dir_vae": "cache/ds/edit",
                   "conditioning_data": ["ref-images"]},
                  {"id": "ref-images", "type": "local", "instance_data_dir": "ds/refs", "caption_strategy": None,
                   "resolution": 64, "cache_dir_vae": "cache/ds/ref"}]
        config["output_dir"] = f"runs/chaos{len(self.train_jobs)}"
        self.train_job = self.client.train(config, loader, name=f"chaos{len(self.train_jobs)}", upload="never").id
        self.train_jobs.append(self.train_job)

    def _keep_training(self) -> None:
        """One training job at a time, the next one submitted when it ends: the trainer always has work."""
        while not self._stop.wait(1.0):
            try:
                state = self.r.hget(self._key("job", self.train_job), "state")
                if state is not None and state.decode() in TERMINAL:
                    self.start_training()
            except Exception:  # noqa: BLE001 - Redis or the gateway away during a fault: next round
                continue

    # --- faults -----------------------------------------------------------------------------------------

    def _key(self, *parts: str) -> str:
        return ":".join([NS, *parts])

    def _running_on(self, prefix: str) -> dict[str, str]:
        """RUNNING jobs whose fencing token starts with ``prefix``: job id -> token."""
        out = {}
        for job_id in [*self.acked.values(), *self.train_jobs]:
            token, state = self.r.hmget(self._key("job", job_id), "worker", "state")
            # RUNNING only: a finished job still names its last worker, and would count as recovered at once
            if token and state == b"RUNNING" and token.decode().startswith(prefix):
                out[job_id] = token.decode()
        return out

    def kill(self, target: str) -> Fault:
        fault = Fault(target, 0.0)
        if target == "redis":
            fault.at = time.monotonic()
            self.redis.kill()
            time.sleep(self.rng.uniform(1.0, 2.0))  # a 1-2 s outage
            self.redis.start()
            threading.Thread(target=self._recovered_redis, args=(fault,), daemon=True).start()
        else:
            svc = self.trainer if target == "trainer" else self.denoisers[int(target[-1])]
            prefix = f"{_tid(0)}:" if target == "trainer" else f"chaos-d{target[-1]}-"
            # Strike while the victim holds work (the trainer: mid-steps), so the fault costs something.
            wait_until = time.monotonic() + 10
            while True:
                if target == "trainer":  # the trainer holding the training job
                    token = (self.r.hget(self._key("job", self.train_job), "worker") or b"").decode()
                    i = next((i for i in range(len(self.trainers)) if token.startswith(f"{_tid(i)}:")), 0)
                    svc, prefix = self.trainers[i], f"{_tid(i)}:"
                held = self._running_on(prefix)
                busy = held and (target != "trainer" or int(self.r.hget(self._key("job", self.train_job), "step")
                                                           or 0) % CHECKPOINT_STEPS)
                if busy or time.monotonic() > wait_until:
                    break
                time.sleep(0.05)
            if target == "trainer":
                fault.peer_up = len(self.trainers) > 1
            else:
                from longcat.rpc.channel import health_status

                peer = self.denoisers[1 - int(target[-1])]
                channel = make_channel(peer.address)
                fault.peer_up = peer.proc.poll() is None and health_status(channel) == "SERVING"
                channel.close()
            last_event = {j: self._last_event_id(j) for j in held if target == "trainer"}
            fault.at = time.monotonic()
            svc.proc.kill()
            svc.proc.wait(30)
            fault.held = list(held)
            if last_event:
                threading.Thread(target=self._stepped_again, args=(fault, last_event), daemon=True).start()
            svc.spawn()  # at once, on the same port and worker id (a container restart)
            threading.Thread(target=self._recovered_jobs, args=(fault, held), daemon=True).start()
        self.faults.append(fault)
        return fault

    def _recovered_jobs(self, fault: Fault, held: dict[str, str]) -> None:
        """Every job the victim held continued: claimed again under another token, or ended."""
        left = dict(held)
        while left and time.monotonic() - fault.at < 600:
            for job_id, token in list(left.items()):
                try:
                    raw = self.r.hmget(self._key("job", job_id), "worker", "state")
                except redis.RedisError:
                    break
                worker, state = (v.decode() if v else "" for v in raw)
                if (worker and worker != token) or state in TERMINAL:
                    del left[job_id]
            time.sleep(0.05)
        if not left:
            fault.recovered_s = time.monotonic() - fault.at if held else 0.0

    def _last_event_id(self, job_id: str) -> str:
        last = self.r.xrevrange(self._key("job", job_id, "events"), count=1)
        return last[0][0].decode() if last else "0"

    def _stepped_again(self, fault: Fault, last_event: dict[str, str]) -> None:
        """A training job continued in fact: a training step (or its end) after the kill's last event."""
        left = dict(last_event)
        while left and time.monotonic() - fault.at < 600:
            for job_id, after in list(left.items()):
                try:
                    new = self.r.xrange(self._key("job", job_id, "events"), f"({after}", "+")
                except redis.RedisError:
                    break
                if any(f.get(b"kind") in (b"training", b"terminal") for _, f in new):
                    del left[job_id]
            time.sleep(0.05)
        if not left:
            fault.stepped_s = time.monotonic() - fault.at

    def _recovered_redis(self, fault: Fault) -> None:
        """Served again: a submission acknowledged after the kill."""
        before = len(self.acked)
        while time.monotonic() - fault.at < 600:
            if len(self.acked) > before:
                fault.recovered_s = time.monotonic() - fault.at
                return
            time.sleep(0.05)

    # --- the run ------------------------------------------------------------------------------------------

    def run(self, duration_s: float, schedule: list[str] | None = None, gap_s: tuple[float, float] = (5, 10),
            submit_period_s: float = 0.5) -> None:
        """Load for ``duration_s`` with faults from ``schedule`` (in order; random targets when None)."""
        threads = [threading.Thread(target=self._submitter, args=(submit_period_s,), daemon=True),
                   threading.Thread(target=self._sample_rss, daemon=True),
                   threading.Thread(target=self._keep_training, daemon=True)]
        for t in threads:
            t.start()
        self.start_training()
        end = time.monotonic() + duration_s
        targets = list(schedule or [])
        while time.monotonic() < end or targets:  # a given schedule is run to its end
            self._stop.wait(self.rng.uniform(*gap_s))
            if schedule is not None and not targets:
                continue
            target = targets.pop(0) if schedule is not None else self.rng.choice(
                ["denoiser-0", "denoiser-1", "denoiser-0", "denoiser-1", "trainer", "redis"])
            self.kill(target)
        self._stop.set()
        for t in threads:
            t.join(60)
        for svc in (*self.denoisers, *self.trainers):  # everything back before the verdict
            svc.wait_serving(300)

    def wait_settled(self, timeout: float = 600.0) -> None:
        ids = [*self.acked.values(), *self.train_jobs]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = [self.r.hget(self._key("job", j), "state") for j in ids]
            if all(s is not None and s.decode() in TERMINAL for s in states):
                return
            time.sleep(0.5)

    # --- the verdict --------------------------------------------------------------------------------------

    def _events(self, job_id: str) -> list[dict]:
        return [{k.decode(): v for k, v in f.items()} for _, f in self.r.xrange(self._key("job", job_id, "events"))]

    def training_reruns(self, job_id: str) -> list[int]:
        """Steps each new attempt of a training job re-ran (the last step reached before minus the step it
        resumed after)."""
        reruns, reached = [], 0
        for ev in self._events(job_id):
            if ev.get("kind", b"").decode() == "training":
                step = int(ev["step"])
                if step <= reached:
                    reruns.append(reached - step + 1)
                    reached = step
                reached = max(reached, step)
        return reruns

    def _has_png(self, job_id: str) -> bool:
        """The result as a client reads it (through the gateway, wherever the stack keeps it)."""
        job = self.stub.GetJob(edit_pb2.GetJobRequest(job_id=job_id), timeout=30)
        return job.result.image.startswith(b"\x89PNG")

    def verdict(self) -> dict:
        lost, not_terminal, twice, no_png, states, dishonest, reasons = [], [], [], [], {}, [], {}
        for job_id in self.acked.values():
            raw = self.r.hget(self._key("job", job_id), "state")
            if raw is None:
                lost.append(job_id)
                continue
            state = raw.decode()
            states[state] = states.get(state, 0) + 1
            terminals = [e for e in self._events(job_id) if e.get("kind") == b"terminal"]
            if state not in TERMINAL:
                not_terminal.append(job_id)
            elif len(terminals) != 1:
                twice.append(job_id)
            if state == "SUCCEEDED" and not self._has_png(job_id):
                no_png.append(job_id)
            if state == "FAILED":
                code, reason, attempts = (v.decode() if v else "" for v in self.r.hmget(
                    self._key("job", job_id), "error_code", "reason", "attempts"))
                head = f"{code}: {reason.split(';')[-1].strip()[:60]}" + (" (not run)" if "not run" in reason else "")
                reasons[head] = reasons.get(head, 0) + 1
                if "not run" in reason and int(attempts or 0) > 0:
                    dishonest.append(job_id)  # "it was not run" said of a job an attempt had started
        training = []
        for job_id in self.train_jobs:
            train = self.r.hgetall(self._key("job", job_id))
            training.append({"state": train.get(b"state", b"").decode(), "step": int(train.get(b"step", b"0") or 0),
                             "terminal_events": sum(e.get("kind") == b"terminal" for e in self._events(job_id)),
                             "attempts": int(train.get(b"attempts", b"0") or 0), "reruns": self.training_reruns(job_id),
                             "reason": train.get(b"reason", b"").decode()})
        # Only faults that cost something: a killed process that held jobs, or Redis.
        costly = [f for f in self.faults if f.held or f.target == "redis"]
        rec = {"denoiser, peer up": [f.recovered_s for f in costly if f.target.startswith("denoiser") and f.peer_up],
               "denoiser, peer down": [f.recovered_s for f in costly if f.target.startswith("denoiser")
                                       and not f.peer_up],
               "trainer, restarted": [f.recovered_s for f in costly if f.target == "trainer" and not f.peer_up],
               "trainer, peer up": [f.recovered_s for f in costly if f.target == "trainer" and f.peer_up],
               "trainer, next step": [f.stepped_s for f in costly if f.target == "trainer"],
               "redis": [f.recovered_s for f in costly if f.target == "redis"]}
        rec = {k: [x for x in v if x is not None] for k, v in rec.items()}
        half = len(self.rss_kb) // 2
        early = statistics.median(self.rss_kb[2:half]) if half > 2 else 0
        late = statistics.median(self.rss_kb[half:]) if self.rss_kb[half:] else 0
        return {
            "accepted": len(self.acked), "states": states, "lost": lost, "not_terminal": not_terminal,
            "terminal_twice": twice, "succeeded_without_png": no_png, "duplicated_request_ids": self.doubled,
            "failed_reasons": reasons, "dishonest_not_run": dishonest,
            "answers": self.codes,
            "faults": {t: sum(f.target.startswith(t) for f in self.faults) for t in ("denoiser", "trainer", "redis")},
            "faults_unrecovered": [f.target for f in self.faults if f.recovered_s is None],
            "recovery_s": {t: {"n": len(v), "p50": round(_pct(v, 0.5), 2), "max": round(max(v), 2) if v else None}
                           for t, v in rec.items()},
            "recovery_all_s": {f"{f.target}@{f.at - self.faults[0].at:.0f}s": (round(f.recovered_s, 2) if
                               f.recovered_s is not None else None, len(f.held), f.peer_up) for f in self.faults},
            "training": training, "checkpoint_steps": CHECKPOINT_STEPS,
            "gateway_rss_mb": {"early_median": round(early / 1024, 1), "late_median": round(late / 1024, 1),
                               "samples": len(self.rss_kb)},
        }

    def close(self) -> None:
        self._stop.set()
        self.client.close()
        for svc in (self.gateway, *self.trainers, *self.denoisers, self.encoder):
            if svc.proc is not None:
                svc.stop(signal.SIGTERM, timeout=30)
        self.r.close()
        self.redis.stop()

    def logs_tail(self) -> str:
        return "\n".join(f"--- {s.name} {s.address}\n{s.log()[-1500:]}" for s in
                         (self.gateway, *self.trainers, *self.denoisers))


def dumps(verdict: dict) -> str:
    return json.dumps(verdict, indent=1, default=str)
