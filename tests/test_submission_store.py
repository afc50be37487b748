"""The SUBMIT script's integrity rules on a real Redis: a request_id reused with another payload is refused,
per-owner quotas of active jobs, and every terminal transition (finish, cancel, expiry, dead letter) gives the
owner's slot back. A refused submission writes no key."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from longcat.api.keys import Keys
from longcat.errors import AlreadyExists, ResourceExhausted
from longcat.jobs.store import JobStore, TenantQuotaFull


@pytest.fixture
def store(redis_server):
    client = redis.Redis.from_url(redis_server.url)
    s = JobStore(client, Keys(f"sub-{uuid.uuid4().hex[:8]}"))
    yield s
    client.close()


def _keys(store: JobStore) -> set[bytes]:
    return set(store.r.scan_iter(match=f"{store.k.ns}:*", count=1000))


def _submit(store: JobStore, owner: str = "alice", rid: str = "", payload: str = "p1", max_active: int = 0,
            kind: str = "edit", deadline: float = 0.0):
    return store.submit(kind, owner, b"request-bytes", rid, deadline=deadline, payload_hash=payload,
                        max_active=max_active)


def test_the_same_request_id_and_payload_returns_the_first_job(store):
    job, created, _ = _submit(store, rid="r1")
    again, created_again, _ = _submit(store, rid="r1")
    assert created and not created_again and again == job


def test_a_request_id_reused_with_another_payload_is_already_exists_and_writes_nothing(store):
    job, _, _ = _submit(store, rid="r1", payload="first")
    before = _keys(store)
    with pytest.raises(AlreadyExists) as err:
        _submit(store, rid="r1", payload="second")
    assert err.value.field == "request_id" and job in str(err.value)
    assert _keys(store) == before
    # Another caller's identical request_id is its own.
    other, created, _ = _submit(store, owner="bob", rid="r1", payload="second")
    assert created and other != job


def test_a_tenant_over_its_quota_is_refused_without_a_trace_and_others_still_submit(store):
    for _ in range(2):
        _submit(store, max_active=2)
    before = _keys(store)
    with pytest.raises(TenantQuotaFull) as err:
        _submit(store, max_active=2)
    assert isinstance(err.value, ResourceExhausted) and err.value.field == "max_active_per_tenant"
    assert "--max-active-per-tenant=2" in str(err.value)
    assert _keys(store) == before
    assert _submit(store, owner="bob", max_active=2)[1]          # another tenant is not held up
    assert _submit(store, kind="training", max_active=2)[1]     # training counts separately
    assert store.active_count("alice", "edit") == 2


def test_a_retry_of_an_accepted_request_is_answered_even_at_the_quota(store):
    job, _, _ = _submit(store, rid="r1", max_active=1)
    assert _submit(store, rid="r1", max_active=1)[0] == job


def _full(store: JobStore) -> str:
    job, _, _ = _submit(store, max_active=1)
    with pytest.raises(TenantQuotaFull):
        _submit(store, max_active=1)
    return job


def test_every_terminal_transition_gives_the_slot_back(store):
    # cancel while queued
    job = _full(store)
    assert store.cancel(job) == "CANCELLED"
    assert store.active_count("alice", "edit") == 0
    # a worker's finish
    job = _full(store)
    assert store.claim(job, "w1", 3) == ("RUNNING", 1)
    assert store.active_count("alice", "edit") == 1  # running still counts
    assert store.finish(job, "w1", "SUCCEEDED")
    assert store.active_count("alice", "edit") == 0
    # a failure
    job = _full(store)
    store.claim(job, "w1", 3)
    assert store.finish(job, "w1", "FAILED", "INVALID_ARGUMENT", "bad")
    assert store.active_count("alice", "edit") == 0
    # the deadline passed before a worker took it
    job, _, _ = _submit(store, max_active=1, deadline=time.time() - 1)
    assert store.claim(job, "w1", 3)[0] == "EXPIRED"
    assert store.active_count("alice", "edit") == 0
    # dead letter: every delivery used up
    job = _full(store)
    store.r.hset(store.k.job(job), "attempts", 3)
    assert store.claim(job, "w2", 3)[0] == "DEAD"
    assert store.active_count("alice", "edit") == 0
    assert _submit(store, max_active=1)[1]


def test_a_slot_whose_job_vanished_is_reclaimed(store):
    job = _full(store)
    store.r.delete(store.k.job(job))  # a restored or flushed Redis: the set names a job that is gone
    assert _submit(store, max_active=1)[1]


def test_a_batched_steps_progress_is_one_round_trip_fenced_per_job_with_each_cancel_flag(store):
    """progress_many (the step scheduler's per-step write): each job's event lands only under its own claim,
    and each answer carries that job's cancel flag."""
    mine, _, _ = _submit(store)
    other, _, _ = _submit(store)
    cancelled, _, _ = _submit(store)
    for job, token in ((mine, "t-mine"), (other, "t-other"), (cancelled, "t-cancel")):
        assert store.claim(job, token, 3)[0] == "RUNNING"
    store.cancel(cancelled)  # a running job: its cancel is asked for, the worker stops at the next step
    before = {j: len(store.events(j)) for j in (mine, other, cancelled)}
    event = {"kind": "progress", "state": "RUNNING", "step": 1, "total": 4}
    answers = store.progress_many([(mine, "t-mine", event), (other, "not-its-token", event),
                                   (cancelled, "t-cancel", event)])
    assert answers == [(True, False), (False, False), (True, True)]
    after = {j: len(store.events(j)) for j in (mine, other, cancelled)}
    assert after == {mine: before[mine] + 1, other: before[other], cancelled: before[cancelled] + 1}
    assert store.progress_many([]) == []
