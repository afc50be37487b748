"""The stack under load and failure, as real processes: many clients over two workers, a worker SIGKILLed
mid-job, a job that fails every delivery (dead letter), and Redis restarted under a running stack.

Each stack here has a private redis-server (append-only file on, as in production), workers with a short
heartbeat timeout (3 s) so a dead worker's job is taken over quickly, and --max-attempts 2.
"""

from __future__ import annotations

import signal
import threading
import time

import grpc
import pytest

from longcat.rpc.channel import make_channel
from longcat.v1 import edit_pb2, edit_pb2_grpc
from tests.gateway_stack import (
    STATE,
    TERMINAL,
    Stack,
    Watcher,
    png_size,
    progress_steps,
    request,
    rpc_error,
    submit,
    terminal_events,
    wait_for,
    wait_job,
    watch,
)
from tests.procs import metric_value
from tests.redis_proc import RedisProcess

pytestmark = pytest.mark.slow

WORKER_ARGS = ("--heartbeat-timeout-s", "3", "--max-attempts", "2", "--encoder-timeout-s", "8")
CLIENTS = 40


@pytest.fixture(scope="module")
def stack(tiny_model_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("gateway-resilience")
    redis_proc = RedisProcess(root).start()
    s = Stack(tiny_model_path, root, redis_proc, ns="res", worker_args=WORKER_ARGS)
    try:
        s.add_worker(), s.add_worker()
        s.add_gateway("main", ["--threads", str(CLIENTS + 8)], env={"LONGCAT_API_KEYS": ""})
        s.wait_serving()
        yield s
    finally:
        s.close()
        redis_proc.stop()


def _states(events) -> list[str]:
    out = []
    for ev in events:
        if not out or out[-1] != STATE(ev.state):
            out.append(STATE(ev.state))
    return out


def _running_events(events) -> list:
    return [ev for ev in events if ev.state == edit_pb2.RUNNING and not ev.HasField("progress")]


def _steps_run(worker) -> float:
    return metric_value(worker.metrics(), "longcat_denoise_steps_total")


# --- 8. many clients, exactly once ---------------------------------------------------------------------------

def test_concurrent_clients_over_two_workers_every_job_runs_exactly_once(stack):
    stack.ensure_workers(2)
    workers = stack.live_workers()
    steps_before = [_steps_run(w) for w in workers]
    created = stack.counters()[0]
    results: list = [None] * CLIENTS
    errors: list = []

    def client(i: int) -> None:
        channel = make_channel(stack.gateways["main"].address)  # one connection per client
        try:
            results[i] = edit_pb2_grpc.EditServiceStub(channel).Edit(
                request(64, 2, seed=i, prompt=f"client {i}: make the sky purple"), timeout=240)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append((i, exc))
        finally:
            channel.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    elapsed = time.monotonic() - t0
    assert not [t for t in threads if t.is_alive()], "some clients never got an answer"
    assert not errors, errors[:3]

    ids = [r.job_id for r in results]
    assert len(set(ids)) == CLIENTS  # one job per client, none merged
    assert stack.counters()[0] == created + CLIENTS  # and no job created twice
    for i, res in enumerate(results):
        assert res.seed == i and png_size(res.image) == (64, 64)
    stub = stack.edit()
    retried = []
    for job_id in ids:
        events = watch(stub, job_id, timeout=60)
        (final,) = terminal_events(events)  # exactly one terminal event per job
        assert final.job.state == edit_pb2.SUCCEEDED
        assert len(_running_events(events)) == final.job.attempts
        if final.job.attempts > 1:  # a worker starved past the 3 s heartbeat timeout was taken over: legal
            retried.append(job_id)
        else:
            assert progress_steps(events) == [1, 2]
    assert len(retried) <= 2, f"{len(retried)} of {CLIENTS} jobs needed a second delivery"
    # Both workers took part, and together ran each job's 2 steps once: 80 steps, not one more.
    deltas = [_steps_run(w) - b for w, b in zip(workers, steps_before)]
    assert all(d > 0 for d in deltas), deltas
    if not retried:
        assert sum(deltas) == 2 * CLIENTS, deltas
    wait_for(lambda: stack.counters()[1:] == (0, 0), 60, "nothing left queued or on the stream")
    print(f"{CLIENTS} concurrent Edits over 2 workers: {elapsed:.1f}s, steps per worker {deltas}")


# --- 7. dead letter -------------------------------------------------------------------------------------------

def test_a_job_failing_every_delivery_is_dead_lettered_with_its_last_error(stack):
    stack.ensure_workers(2)
    stub = stack.edit()
    stack.encoder.stop()  # every encode now fails UNAVAILABLE: a transient error, retried on redelivery
    try:
        job = submit(stub, request(64, 2, prompt="nobody can encode this"))
        final = wait_job(stub, job.id, TERMINAL, 120)
        assert final.state == edit_pb2.FAILED and final.error_code == "UNAVAILABLE", final
        assert "failed 2 deliveries; last error:" in final.reason, final.reason
        assert "encoder service was unreachable" in final.reason and "127.0.0.1" not in final.reason
        events = watch(stub, job.id)
        assert len(_running_events(events)) == 2  # two deliveries ran (--max-attempts 2), then no more
        assert len(terminal_events(events)) == 1 and not progress_steps(events)
        dead = [f[b"job"].decode() for _, f in stack.r.xrange(stack.key("edit", "dead"))]
        assert job.id in dead
        wait_for(lambda: stack.counters()[2] == 0, 30, "the dead job to leave the stream")
    finally:
        stack.restart_encoder()  # on the same port: the workers' channels reconnect to it
    # New jobs succeed again (a first delivery that still meets the reconnecting channel is retried).
    res = stub.Edit(request(64, 2, prompt="the encoder is back"), timeout=120)
    assert png_size(res.image) == (64, 64)


# --- 6. a worker killed mid-job -----------------------------------------------------------------------------------

def test_a_job_whose_worker_is_killed_is_taken_over_and_succeeds_once(stack):
    STEPS = 100  # ~10 s a run on a 2-core CPU: it is still running when its worker is killed
    stack.ensure_workers(2)
    stub = stack.edit()
    job = submit(stub, request(512, STEPS, prompt="survive a dead worker"))
    live = Watcher(stub, job.id)  # a client watching the whole time, across the takeover
    live.start()
    watch(stub, job.id, until=lambda ev: ev.HasField("progress") and ev.progress.step >= 3)
    pid = stack.worker_pid(job.id)  # the worker holding the job right now (from its fencing token)
    victims = [w for w in stack.live_workers() if w.proc.pid == pid]
    assert len(victims) == 1, (pid, stack.job_field(job.id, "state"), [w.proc.pid for w in stack.live_workers()])
    victim = victims[0]
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait(30)
    t_killed = time.monotonic()

    events = live.result(300)
    (final,) = terminal_events(events)  # exactly ONE terminal event, and it is SUCCEEDED
    assert final.job.state == edit_pb2.SUCCEEDED and final.job.attempts == 2, final.job
    assert png_size(final.job.result.image) == (512, 512)
    assert [ev.message for ev in _running_events(events)] == ["attempt 1", "attempt 2"]
    assert progress_steps(events)[-STEPS:] == list(range(1, STEPS + 1))  # the second attempt ran every step
    assert stack.worker_pid(job.id) is None and time.monotonic() - t_killed < 240
    # Watching from the start afterwards tells the same story.
    again = watch(stub, job.id)
    assert [ev.event_id for ev in again] == [ev.event_id for ev in events]
    assert len(terminal_events(again)) == 1
    got = stub.GetJob(edit_pb2.GetJobRequest(job_id=job.id), timeout=30)
    assert got.state == edit_pb2.SUCCEEDED and got.attempts == 2 and got.result.image == final.job.result.image
    wait_for(lambda: stack.counters()[1:] == (0, 0), 60, "the queue and stream to drain")


# --- 11. Redis restarted under a running stack -------------------------------------------------------------------

@pytest.fixture(scope="module")
def redis_stack(tiny_model_path, tmp_path_factory):
    """A stack of its own (own redis-server, encoder, one worker, gateway) for restarting Redis under it."""
    root = tmp_path_factory.mktemp("gateway-redis-restart")
    redis_proc = RedisProcess(root).start()
    s = Stack(tiny_model_path, root, redis_proc, ns="rr", worker_args=WORKER_ARGS)
    try:
        s.add_worker()
        s.add_gateway("main", env={"LONGCAT_API_KEYS": ""})
        s.wait_serving()
        yield s
    finally:
        s.close()
        redis_proc.stop()


def test_redis_restart_unavailable_then_recovery(redis_stack):
    s = redis_stack
    stub = s.edit()
    before = stub.Edit(request(64, 2, seed=3), timeout=120)
    in_flight = submit(stub, request(512, 60, prompt="running while redis goes away"))
    watch(stub, in_flight.id, until=lambda ev: ev.HasField("progress"))

    s.redis.stop()
    try:
        for call, req in [(stub.SubmitEdit, request()), (stub.Edit, request()),
                          (stub.GetJob, edit_pb2.GetJobRequest(job_id=before.job_id)),
                          (stub.WatchJob, edit_pb2.WatchJobRequest(job_id=before.job_id))]:
            t0 = time.monotonic()
            err = rpc_error(call, req, timeout=30)
            assert err.code() == grpc.StatusCode.UNAVAILABLE, err
            assert time.monotonic() - t0 < 5 and "job queue (Redis) is unreachable" in err.details()
        wait_for(lambda: s.health() == "NOT_SERVING", 20, "the gateway to report NOT_SERVING")
        # Validation needs no Redis: bad input is still refused as such.
        assert rpc_error(stub.Edit, request((100, 64)), timeout=30).code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        s.redis.start()  # same port, same folder: the append-only file brings the jobs back

    wait_for(lambda: s.health() == "SERVING", 30, "the gateway to report SERVING again")
    # What was stored survived; the gateway and the worker reconnected on their own.
    got = stub.GetJob(edit_pb2.GetJobRequest(job_id=before.job_id), timeout=30)
    assert got.state == edit_pb2.SUCCEEDED and got.result.image == before.image
    after = stub.Edit(request(64, 2, seed=3), timeout=120)
    assert after.job_id != before.job_id and after.image == before.image
    # The job that was running when Redis went away kept running (an outage costs progress events, not the
    # attempt) and finishes; had it ended while Redis was away (its result could not be written), its worker
    # would have resumed it at once from its own pending entries: a second attempt.
    final = wait_job(stub, in_flight.id, TERMINAL, 240)
    assert final.state == edit_pb2.SUCCEEDED and png_size(final.result.image) == (512, 512), final
    assert final.attempts in (1, 2) and len(terminal_events(watch(stub, in_flight.id))) == 1
    assert s.live_workers() == s.workers  # nothing had to be restarted but Redis
    assert "redis unreachable; retrying" in s.workers[0].log_path.read_text()
