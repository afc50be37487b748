"""The bounded chaos test (tests/chaos_stack.py): a real local stack under edits and a training job while
denoisers, the trainer and Redis are SIGKILLed and restarted. CI runs a short fixed schedule (each kind of
fault at least once); ``LONGCAT_LONG_TESTS=1`` runs minutes of random faults (bench/chaos.py prints the same
figures for RELIABILITY.md)."""

from __future__ import annotations

import os

import pytest

from tests.chaos_stack import CHECKPOINT_STEPS, Chaos, dumps

LONG = os.environ.get("LONGCAT_LONG_TESTS") == "1"


@pytest.fixture()
def chaos(tmp_path, tiny_model_path):
    c = Chaos(tmp_path, tiny_model_path, seed=15, train_steps=200 if LONG else 48)
    try:
        yield c
    finally:
        c.close()


def test_every_acknowledged_job_ends_once_under_sigkills_of_workers_trainer_and_redis(chaos):
    if LONG:
        chaos.run(300, gap_s=(4, 10))
    else:
        chaos.run(36, schedule=["trainer", "denoiser-0", "redis", "denoiser-1"], gap_s=(6, 8))
    chaos.wait_settled(600)
    v = chaos.verdict()
    print("\nCHAOS", dumps(v), flush=True)
    context = dumps(v) + "\n" + chaos.logs_tail()
    assert v["accepted"] > 0 and sum(v["faults"].values()) >= (4 if not LONG else 10), context
    assert not v["lost"] and not v["not_terminal"] and not v["terminal_twice"], context
    assert not v["duplicated_request_ids"], context
    assert v["states"] == {"SUCCEEDED": v["accepted"]}, context   # no result lost: every edit has its PNG
    assert not v["succeeded_without_png"], context
    assert not v["faults_unrecovered"], context
    assert not v["dishonest_not_run"], context
    for t in v["training"]:  # one job at a time, the next submitted when one ends
        assert t["state"] == "SUCCEEDED" and t["terminal_events"] == 1, context
        # No step re-run beyond the last checkpoint interval (a kill while a checkpoint is being written
        # re-runs at most the whole interval).
        assert all(n <= CHECKPOINT_STEPS for n in t["reruns"]), context
    rss = v["gateway_rss_mb"]
    assert rss["late_median"] <= rss["early_median"] * 1.25 + 20, context  # memory flat, not growing
