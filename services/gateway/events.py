"""Job events as stored in Redis -> ``JobEvent`` messages, and the watch loop WatchJob relays."""

from __future__ import annotations

from typing import Iterator

from longcat.blobs import resolve
from longcat.jobs.store import JobStore, as_str
from longcat.v1 import common_pb2, edit_pb2


def _f(fields: dict, name: str, cast=float, default=0):
    v = fields.get(name)
    return default if v is None else cast(as_str(v))


def to_event(store: JobStore, job_id: str, event_id: str, fields: dict) -> edit_pb2.JobEvent:
    kind = as_str(fields.get("kind", b""))
    ev = edit_pb2.JobEvent(event_id=event_id, job_id=job_id, state=edit_pb2.JobState.Value(as_str(fields["state"])),
                           time=_f(fields, "time"), message=as_str(fields.get("message", b"")))
    if kind == "queued":
        ev.queue_position = _f(fields, "position", int)
    elif kind == "progress":
        ev.progress.CopyFrom(common_pb2.StepProgress(
            step=_f(fields, "step", int), total=_f(fields, "total", int), elapsed_s=_f(fields, "elapsed_s"),
            eta_s=_f(fields, "eta_s"), preview_png=resolve(store.blobs, fields, "preview_png")))
    elif kind == "training":
        ev.training.CopyFrom(edit_pb2.TrainingProgress(
            step=_f(fields, "step", int), total_steps=_f(fields, "total", int), loss=_f(fields, "loss"),
            lr=_f(fields, "lr"), eta_s=_f(fields, "eta_s")))
    elif kind == "validation":
        ev.validation.CopyFrom(edit_pb2.ValidationImage(
            step=_f(fields, "step", int), index=_f(fields, "index", int), prompt=as_str(fields.get("prompt", b"")),
            image_png=resolve(store.blobs, fields, "image_png")))
    elif kind == "result_image":
        ev.result_image.CopyFrom(edit_pb2.ResultImage(name=as_str(fields.get("name", b"")),
                                                      image_png=resolve(store.blobs, fields, "image_png")))
    elif kind == "checkpoint":
        ev.checkpoint.CopyFrom(edit_pb2.Checkpoint(step=_f(fields, "step", int), path=as_str(fields.get("path", b""))))
    elif kind == "terminal":
        view = store.get(job_id)
        if view is not None:
            ev.job.CopyFrom(store.to_proto(view))
    return ev


def watch(store: JobStore, job_id: str, after: str, is_active, block_ms: int = 1000) -> Iterator[edit_pb2.JobEvent]:
    """Relay events after ``after`` as they are written, until the terminal one; while the job waits in the
    queue, also report its position as it moves (with the last real event id, so resuming skips nothing)."""
    last_id = after or "0"
    last_position = None
    while is_active():
        batch = store.events(job_id, last_id, block_ms=block_ms)
        for event_id, fields in batch:
            last_id = event_id
            ev = to_event(store, job_id, event_id, fields)
            if ev.HasField("queue_position"):
                last_position = ev.queue_position
            yield ev
            if as_str(fields.get("kind", b"")) == "terminal":
                return
        if not batch:
            view = store.get(job_id)
            if view is None:
                return
            if view.terminal:  # resumed after its terminal event: relay what a race left (state and event
                for event_id, fields in store.events(job_id, last_id, count=10000):  # are one Lua step), end
                    yield to_event(store, job_id, event_id, fields)
                return
            if view.state == "QUEUED":
                position = store.position(job_id, view.kind)
                if position != last_position:
                    last_position = position
                    yield edit_pb2.JobEvent(event_id=last_id if last_id != "0" else "", job_id=job_id,
                                            state=edit_pb2.QUEUED, queue_position=position)
