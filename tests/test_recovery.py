"""Honest deadlines and fast recovery at the job store, on a real Redis: "it was not run" only when no attempt
started; a worker resumes its own pending entries (its PEL) at once; a restarted trainer takes back the
leases its previous run held."""

from __future__ import annotations

import re
import time
import uuid

import pytest

from longcat.api.keys import Keys
from longcat.jobs.store import JobStore


@pytest.fixture()
def store(redis_server):
    s = JobStore(redis_server.client(), Keys(f"rec-{uuid.uuid4().hex[:6]}"))
    s.ensure_group()
    return s


def test_a_job_whose_deadline_passed_before_any_attempt_says_it_was_not_run(store):
    job_id, _, _ = store.submit("edit", "t", b"req", deadline=time.time() - 1)
    assert store.claim(job_id, "w1:a", 3) == ("EXPIRED", 0)
    view = store.get(job_id)
    assert view.state == "FAILED" and view.error_code == "DEADLINE_EXCEEDED"
    assert "it was not run" in view.reason and view.started_at == 0


def test_a_job_whose_deadline_passed_mid_run_says_which_attempt_ran(store):
    job_id, _, _ = store.submit("edit", "t", b"req", deadline=time.time() + 1.0)
    assert store.claim(job_id, "w1:a", 3) == ("RUNNING", 1)
    started = store.get(job_id).started_at
    time.sleep(1.2)  # the worker died mid-run; its job is reclaimed after the deadline
    assert store.claim(job_id, "w2:b", 3) == ("EXPIRED", 1)
    view = store.get(job_id)
    assert view.state == "FAILED" and view.error_code == "DEADLINE_EXCEEDED", view.reason
    assert "not run" not in view.reason
    assert view.reason.startswith("attempt 1 started at ") and "passed during the run" in view.reason
    stamp = re.search(r"started at (\S+);", view.reason).group(1)
    assert stamp == time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started)) + f".{int(started % 1 * 1000):03d}Z"


def test_a_job_whose_deadline_has_not_passed_is_continued_by_the_next_claim(store):
    job_id, _, _ = store.submit("edit", "t", b"req", deadline=time.time() + 600)
    assert store.claim(job_id, "w1:a", 3) == ("RUNNING", 1)
    assert store.claim(job_id, "w2:b", 3) == ("RUNNING", 2)  # reclaimed: continues, the old token is fenced
    assert not store.finish(job_id, "w1:a", "SUCCEEDED")
    assert store.finish(job_id, "w2:b", "SUCCEEDED") and store.get(job_id).state == "SUCCEEDED"


def test_a_worker_reads_back_its_own_pending_entries_and_only_its_own(store):
    ids = [store.submit("edit", "t", b"req")[0] for _ in range(3)]
    mine = store.read_new("worker-a", None, count=2)
    theirs = store.read_new("worker-b", None, count=1)
    assert [j for _, _, j in mine] == ids[:2] and [j for _, _, j in theirs] == ids[2:]
    assert store.read_new("worker-a", None, count=5) == []  # nothing new
    # "worker-a" restarts (same name): its two entries come back at once, worker-b's stay with worker-b.
    assert store.read_own_pending("worker-a") == mine
    store.ack(mine[0][1], mine[0][0])
    assert store.read_own_pending("worker-a") == mine[1:]
    assert store.read_own_pending("worker-c") == []


def test_a_restarted_trainer_drops_only_the_leases_of_its_previous_run(store):
    from services.trainer.reaper import take_back_own_jobs

    jobs = [store.submit("training", "t", b"req")[0] for _ in range(3)]
    for job_id, token in zip(jobs, ["trainer-1:111-aa", "trainer-10:222-bb", "trainer-2:333-cc"]):
        store.mark_active(job_id)
        assert store.lease(job_id, token, 600).r.set(store.k.train_lease(job_id), token, nx=True, px=600_000)
    dispatched = []
    assert take_back_own_jobs(store, "trainer-1", dispatched.append) == [jobs[0]] == dispatched
    assert [store.lease_held(j) for j in jobs] == [False, True, True]
