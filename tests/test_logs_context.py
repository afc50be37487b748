"""The job id and tenant of the current job on every log line, in both formats (longcat.logs)."""

from __future__ import annotations

import json
import logging

from longcat.logs import JsonFormatter, PlainFormatter, bind_job, job_context, log_scope, request_id


def _record(**extra) -> logging.LogRecord:
    record = logging.LogRecord("longcat.test", logging.INFO, __file__, 1, "hello", (), None)
    record.__dict__.update(extra)
    return record


def test_both_formats_carry_the_job_and_tenant_of_the_block():
    with job_context("job-1", "alice"):
        line = json.loads(JsonFormatter().format(_record()))
        plain = PlainFormatter().format(_record())
    assert line["job_id"] == "job-1" and line["tenant"] == "alice"
    assert plain.endswith("hello  job_id=job-1 tenant=alice")
    line = json.loads(JsonFormatter().format(_record()))
    assert "job_id" not in line and "tenant" not in line  # outside the block: no stale job


def test_nested_blocks_restore_and_a_line_may_name_its_own_job():
    token = request_id.set("rid")
    try:
        with job_context("outer", "alice"):
            with job_context("inner"):  # None: the tenant is kept
                line = json.loads(JsonFormatter().format(_record()))
                assert (line["job_id"], line["tenant"], line["request_id"]) == ("inner", "alice", "rid")
            assert json.loads(JsonFormatter().format(_record()))["job_id"] == "outer"
            # a batch-level line lists its jobs itself; an explicit field wins over the context
            line = json.loads(JsonFormatter().format(_record(job_id="other", job_ids=["a", "b"])))
            assert line["job_id"] == "other" and line["job_ids"] == ["a", "b"]
    finally:
        request_id.reset(token)


def test_what_a_request_learns_midway_ends_with_its_scope():
    with log_scope():
        bind_job(owner="bob")
        bind_job("new-job")  # e.g. the id a submission just created: the call's closing line names it
        line = json.loads(JsonFormatter().format(_record()))
        assert line["job_id"] == "new-job" and line["tenant"] == "bob"
    assert "job_id" not in json.loads(JsonFormatter().format(_record()))
