"""Printing jobs, events and adapters for people (lines) or scripts (``--json``)."""

from __future__ import annotations

import json
import sys

from google.protobuf.json_format import MessageToDict

from longcat.v1 import edit_pb2


def as_dict(msg, drop_bytes: bool = True) -> dict:
    d = MessageToDict(msg, preserving_proto_field_name=True)
    if drop_bytes:  # images stay out of JSON output; they are written to files instead
        _strip(d)
    return d


def _strip(d):
    if isinstance(d, dict):
        for k in list(d):
            if k in ("image", "image_png", "preview_png"):
                d[k] = f"<{len(d[k]) * 3 // 4} bytes>"
            else:
                _strip(d[k])
    elif isinstance(d, list):
        for x in d:
            _strip(x)


def job_line(job: edit_pb2.Job) -> str:
    kind = edit_pb2.JobKind.Name(job.kind).lower()
    state = edit_pb2.JobState.Name(job.state)
    extra = []
    if job.state == edit_pb2.QUEUED and job.queue_position:
        extra.append(f"position {job.queue_position}")
    if job.total_steps:
        extra.append(f"step {job.step}/{job.total_steps}")
    if job.adapter_name:
        extra.append(f"adapter {job.adapter_name}")
    if job.reason:
        extra.append(job.reason)
    return f"{job.id}  {kind:8s} {state:9s} " + "  ".join(extra)


def emit(obj, args, human: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(obj if isinstance(obj, (dict, list)) else as_dict(obj)))
    else:
        print(human)


def err(text: str) -> None:
    print(text, file=sys.stderr)


def emit_list(items, args, line, empty: str) -> None:
    """A list for people (one line each, or ``empty``) or for scripts (a JSON array)."""
    if getattr(args, "json", False):
        print(json.dumps([as_dict(i) for i in items]))
        return
    for i in items:
        print(line(i))
    if not items:
        print(empty)
