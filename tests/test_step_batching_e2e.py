"""The step scheduler in the served stack, as real processes (Redis, encoder, denoiser workers, gateway):
a worker SIGKILLed mid-batch leaves every job of the batch to be taken over and finished exactly once, and a
HIGH request overtakes NORMAL ones already running on the worker (they pause, then finish)."""

from __future__ import annotations

import signal

import pytest

from longcat.v1 import edit_pb2
from tests.gateway_stack import (
    Stack,
    Watcher,
    png_size,
    progress_steps,
    request,
    submit,
    terminal_events,
    wait_for,
    wait_job,
    watch,
)
from tests.redis_proc import RedisProcess

pytestmark = pytest.mark.slow

WORKER_ARGS = ("--heartbeat-timeout-s", "3", "--max-attempts", "3", "--max-inflight", "4")


@pytest.fixture(scope="module")
def stack(tiny_model_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("step-batching")
    redis_proc = RedisProcess(root).start()
    s = Stack(tiny_model_path, root, redis_proc, ns="batch", worker_args=WORKER_ARGS)
    try:
        s.add_worker()
        s.add_gateway("main", env={"LONGCAT_API_KEYS": ""})
        s.wait_serving()
        yield s
    finally:
        s.close()
        redis_proc.stop()


def test_a_worker_killed_mid_batch_leaves_every_job_finished_exactly_once(stack):
    STEPS = 60
    stub = stack.edit()
    jobs = [submit(stub, request(256, STEPS, prompt="survive a dead worker", seed=i)) for i in range(3)]
    watchers = [Watcher(stub, j.id) for j in jobs]
    for w in watchers:
        w.start()
    for j in jobs:  # all three in flight together on the one worker
        watch(stub, j.id, until=lambda ev: ev.HasField("progress") and ev.progress.step >= 2)
    (victim,) = stack.live_workers()
    assert {stack.worker_pid(j.id) for j in jobs} == {victim.proc.pid}
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait(30)
    stack.ensure_workers(1)

    images = []
    for j, w in zip(jobs, watchers):
        events = w.result(300)
        (final,) = terminal_events(events)  # exactly ONE terminal event each, and it is SUCCEEDED
        assert final.job.state == edit_pb2.SUCCEEDED and final.job.attempts == 2, final.job
        assert png_size(final.job.result.image) == (256, 256)
        assert progress_steps(events)[-STEPS:] == list(range(1, STEPS + 1))  # the second attempt ran every step
        images.append(final.job.result.image)
    wait_for(lambda: stack.counters()[1:] == (0, 0), 60, "the queue and stream to drain")
    # Batched on two workers (one killed) = alone: the first request again, on its own, gives the same PNG bytes.
    alone = wait_job(stub, submit(stub, request(256, STEPS, prompt="survive a dead worker", seed=0)).id,
                     (edit_pb2.SUCCEEDED,), 300)
    assert alone.result.image == images[0]


def test_high_priority_overtakes_running_normal_jobs(stack):
    stack.ensure_workers(1)
    stub = stack.edit()
    normal = [submit(stub, request(256, 40, prompt="background work", seed=10 + i)) for i in range(2)]
    for j in normal:
        watch(stub, j.id, until=lambda ev: ev.HasField("progress") and ev.progress.step >= 2)
    high = submit(stub, request(256, 5, prompt="interactive", seed=20, priority=edit_pb2.PRIORITY_HIGH))
    done_high = wait_job(stub, high.id, (edit_pb2.SUCCEEDED,), 120)
    t_high = done_high.finished_at
    for j in normal:
        final = wait_job(stub, j.id, (edit_pb2.SUCCEEDED,), 300)
        assert final.finished_at > t_high and final.attempts == 1  # paused, resumed, not restarted
        assert progress_steps(watch(stub, j.id)) == list(range(1, 41))
    assert stack.job_field(high.id, "priority") == "high"
    # Strict priority at every step boundary: no NORMAL step ran between the HIGH job's first and last step.
    high_times = [ev.time for ev in watch(stub, high.id) if ev.HasField("progress")]
    for j in normal:
        between = [ev for ev in watch(stub, j.id) if ev.HasField("progress") and high_times[0] < ev.time < high_times[-1]]
        assert not between, [ev.progress.step for ev in between]


def test_an_edit_below_the_running_priority_stays_queued_until_it_ends(stack):
    """A NORMAL edit sent while a HIGH one runs is not started beside it (it could only wait, paused, and its
    admission would delay the HIGH job's steps): it stays QUEUED, then runs once the HIGH job is done."""
    stack.ensure_workers(1)
    stub = stack.edit()
    high = submit(stub, request(256, 12, prompt="interactive", seed=30, priority=edit_pb2.PRIORITY_HIGH))
    watch(stub, high.id, until=lambda ev: ev.HasField("progress") and ev.progress.step >= 2)
    normal = submit(stub, request(256, 3, prompt="background work", seed=31))
    done_high = wait_job(stub, high.id, (edit_pb2.SUCCEEDED,), 120)
    done_normal = wait_job(stub, normal.id, (edit_pb2.SUCCEEDED,), 120)
    assert done_normal.started_at >= done_high.finished_at > 0 and done_normal.attempts == 1
