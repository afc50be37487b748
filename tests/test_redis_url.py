"""The one Redis URL parser/factory (plain or through Sentinels), the consumer group re-created after a
failover lost it, and durable acknowledgement refusing what no replica confirmed; on real redis-servers."""

from __future__ import annotations

import time

import pytest

from longcat.api.keys import EDIT_GROUP, Keys
from longcat.errors import InvalidArgument, Unavailable
from longcat.jobs.connection import connect, redis_unavailable_as_error
from longcat.jobs.redis_url import celery_broker, parse
from longcat.jobs.store import JobStore, NotReplicated
from longcat.stack.redis_ha import LocalRedisHA


def test_sentinel_urls_are_split_into_their_parts():
    t = parse("redis+sentinel://:p%40ss@h1:26379,h2:26380,h3/mymaster/2?sentinel_password=sp")
    assert t.is_sentinel and t.sentinels == (("h1", 26379), ("h2", 26380), ("h3", 26379))
    assert (t.master, t.db, t.password, t.sentinel_password) == ("mymaster", 2, "p@ss", "sp")
    assert not parse("redis://:pw@host:6379/0").is_sentinel


@pytest.mark.parametrize("url", ["redis+sentinel://h1:26379", "redis+sentinel://h1:x/m/0",
                                 "redis+sentinel://h1:26379/m/zero"])
def test_bad_sentinel_urls_name_the_field(url):
    with pytest.raises(InvalidArgument) as err:
        parse(url)
    assert err.value.field == "redis_url"


def test_celery_gets_one_sentinel_url_per_sentinel_and_the_master_name():
    broker, options = celery_broker("redis+sentinel://:pw@h1:26379,h2:26380/longcat/1")
    assert broker == "sentinel://:pw@h1:26379/1;sentinel://:pw@h2:26380/1"
    assert options == {"master_name": "longcat"}
    assert celery_broker("redis://h:6379/0") == ("redis://h:6379/0", {})


def test_a_lost_consumer_group_is_created_again(redis_server):
    """A promoted replica may lack the group (created just before the failover): the worker's read re-creates
    it from id 0, so entries still in the stream are delivered (their claims are fenced)."""
    store = JobStore(connect(redis_server.url), Keys("nogroup"))
    store.ensure_group()
    job_id, _, _ = store.submit("edit", "o", b"req")
    store.r.xgroup_destroy(store.k.edit_stream, EDIT_GROUP)
    assert store.read_new("w1", 10) == []          # NOGROUP -> the group is back
    assert [j for _, _, j in store.read_new("w1", 10)] == [job_id]
    store.r.xgroup_destroy(store.k.edit_stream, EDIT_GROUP)
    store.heartbeat("w1", "0-1")                   # no exception: re-created
    store.r.xgroup_destroy(store.k.edit_stream, EDIT_GROUP)
    assert store.reclaim_stale("w1", 0) == []       # likewise, and nothing pending in a new group
    store.r.xgroup_destroy(store.k.edit_stream, EDIT_GROUP)
    store.ack("0-1")                               # an ack into a missing group is a no-op, not an error


def test_durable_ack_refuses_a_submission_no_replica_confirmed(redis_server):
    store = JobStore(connect(redis_server.url), Keys("durable"), durable_replicas=1, durable_timeout_ms=200)
    t0 = time.monotonic()
    with pytest.raises(NotReplicated) as err:
        store.submit("edit", "o", b"req", request_id="r1")
    assert time.monotonic() - t0 < 2.0 and isinstance(err.value, Unavailable) and err.value.created
    # The retry with the same request_id finds the same job (refused again: still no replica).
    with pytest.raises(NotReplicated) as again:
        store.submit("edit", "o", b"req", request_id="r1")
    assert again.value.job_id == err.value.job_id and not again.value.created


@pytest.fixture(scope="module")
def ha(tmp_path_factory):
    cluster = LocalRedisHA(tmp_path_factory.mktemp("ha"), down_after_ms=1000, failover_timeout_ms=3000).start()
    yield cluster
    cluster.stop()


def test_durable_ack_passes_with_a_replica_and_a_client_follows_a_failover(ha):
    store = JobStore(connect(ha.url), Keys("ha"), durable_replicas=1, durable_timeout_ms=1000)
    job_id, created, _ = store.submit("edit", "o", b"req", request_id="a")
    assert created and ha.replica().client().hget(f"ha:job:{job_id}", "state") == b"QUEUED"
    old = ha.primary()
    old.proc.kill()
    t0 = time.monotonic()
    errors = set()
    while time.monotonic() - t0 < 30:
        try:
            with redis_unavailable_as_error():
                view = store.get(job_id)
            break
        except Unavailable as exc:  # the switch: UNAVAILABLE, never another error, never a hang
            errors.add(type(exc.__cause__).__name__)
            time.sleep(0.1)
    assert view is not None and view.state == "QUEUED", "the acknowledged job survived the failover"
    assert ha.primary() is not old
    assert errors <= {"ConnectionError", "MasterNotFoundError", "TimeoutError", "ReadOnlyError"}, errors


def test_a_training_job_whose_claim_a_failover_lost_is_dispatched_again(redis_server):
    """Marked active by a worker, QUEUED again on the promoted replica (the claim was not replicated), no
    lease: the reaper hands it to the trainers again instead of leaving it queued with no Celery message."""
    from services.trainer.reaper import reap_once

    store = JobStore(connect(redis_server.url), Keys("reap-failover"))
    job_id, _, _ = store.submit("training", "o", b"req")
    sent = []
    assert reap_once(store, sent.append) == [] and sent == []   # not active: Celery still carries it
    store.mark_active(job_id)
    store.r.delete(store.k.lock("train-reaper"))
    assert reap_once(store, sent.append) == [job_id] and sent == [job_id]
    store.r.delete(store.k.lock("train-reaper"))
    assert reap_once(store, sent.append) == []                  # once per attempt, not every pass


def test_a_queued_training_job_whose_celery_message_a_failover_lost_is_dispatched_again(redis_server):
    """QUEUED, never marked active, and no message for it in the broker (published to, or taken from, the
    primary that was lost): the reaper dispatches it again, once per grace period; never while a real Celery
    message for it waits in the queue, nor while a worker holds it."""
    pytest.importorskip("celery")
    from longcat.jobs.celery_app import QUEUE, TASK, make_app, waiting_job_ids
    from services.trainer.reaper import reap_once

    store = JobStore(connect(redis_server.url), Keys("reap-orphan"))
    store.r.delete(QUEUE)
    job_id, _, _ = store.submit("training", "o", b"req")
    app = make_app(redis_server.url)
    app.send_task(TASK, args=[job_id], queue=QUEUE)  # what the gateway sends
    waiting = lambda: waiting_job_ids(store.r)  # noqa: E731
    assert waiting() == {job_id}
    sent = []

    def reap():
        store.r.delete(store.k.lock("train-reaper"))
        return reap_once(store, sent.append, waiting=waiting, orphan_grace_s=0.5)

    time.sleep(0.6)
    assert reap() == [] and sent == []                   # its message waits in the broker
    store.r.delete(QUEUE)                                # the failover lost it
    assert reap() == [job_id] and sent == [job_id]
    assert reap() == [] and sent == [job_id]             # not again within the grace period
    time.sleep(0.6)
    assert reap() == [job_id] and sent == [job_id] * 2  # still nothing carries it: again
    store.mark_active(job_id)                            # a worker took it: its lease is the reaper's test
    store.r.set(store.k.train_lease(job_id), "trainer-1:1-aa", px=60_000)
    time.sleep(0.6)
    assert reap() == []
    fresh, _, _ = store.submit("training", "o", b"req2")
    assert reap() == []                                  # just submitted: its message may be on its way
    app.close()
