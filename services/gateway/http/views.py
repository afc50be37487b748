"""Public messages -> the JSON the HTTP door answers: jobs (results as URLs, never inline bytes), job events
(previews and results as data URLs) and adapters."""

from __future__ import annotations

import base64
from urllib.parse import quote

from longcat.v1 import adapters_pb2, edit_pb2

STATE = edit_pb2.JobState.Name


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def result_path(job_id: str) -> str:
    return f"/v1/jobs/{job_id}/result"


def result_json(result: edit_pb2.EditResult, inline: bool = False) -> dict:
    t = result.timings
    out = {"width": result.width, "height": result.height, "seed": result.seed, "url": result_path(result.job_id),
           "timings": {"queued_s": t.queued_s, "encode_s": t.encode_s, "denoise_s": t.denoise_s,
                       "decode_s": t.decode_s, "total_s": t.total_s}}
    if inline:
        out["image"] = data_url(result.image)
    return out


def job_json(job: edit_pb2.Job) -> dict:
    out = {"id": job.id, "object": "job", "kind": edit_pb2.JobKind.Name(job.kind).lower(),
           "state": STATE(job.state), "reason": job.reason, "error_code": job.error_code,
           "created_at": job.created_at, "started_at": job.started_at, "finished_at": job.finished_at,
           "queue_position": job.queue_position, "request_id": job.request_id, "step": job.step,
           "total_steps": job.total_steps, "attempts": job.attempts, "result": None}
    if job.kind == edit_pb2.TRAINING:
        out["adapter_name"] = job.adapter_name
        out["adapter_ref"] = job.adapter_ref  # the published version, once SUCCEEDED
    if job.HasField("result"):
        out["result"] = result_json(job.result)
    return out


def event_kind(ev: edit_pb2.JobEvent) -> str:
    payload = ev.WhichOneof("payload")
    if payload == "job":
        return "result" if ev.job.state == edit_pb2.SUCCEEDED and ev.job.HasField("result") else "state"
    return {"queue_position": "queued", "progress": "progress", "training": "loss", "validation": "validation",
            "checkpoint": "checkpoint"}.get(payload, "state")


def event_json(ev: edit_pb2.JobEvent) -> dict:
    kind = event_kind(ev)
    out = {"id": ev.event_id, "job_id": ev.job_id, "kind": kind, "state": STATE(ev.state), "time": ev.time,
           "message": ev.message}
    if kind == "queued":
        out["queue_position"] = ev.queue_position
    elif kind == "progress":
        p = ev.progress
        out.update(step=p.step, total=p.total, elapsed_s=p.elapsed_s, eta_s=p.eta_s,
                   preview=data_url(p.preview_png) if p.preview_png else None)
    elif kind == "loss":
        t = ev.training
        out.update(step=t.step, total=t.total_steps, loss=t.loss, lr=t.lr, eta_s=t.eta_s)
    elif kind == "validation":
        v = ev.validation
        out.update(step=v.step, index=v.index, prompt=v.prompt, image=data_url(v.image_png))
    elif kind == "checkpoint":
        out.update(step=ev.checkpoint.step)
    elif ev.HasField("job"):
        out["job"] = job_json(ev.job)
        if kind == "result":
            out["result"] = result_json(ev.job.result, inline=True)
    return out


def adapter_json(a: adapters_pb2.Adapter) -> dict:
    return {"name": a.name, "object": "adapter", "rank": a.rank, "alpha": a.alpha, "format": a.format,
            "size_bytes": a.size_bytes, "created_at": a.created_at, "job_id": a.job_id, "owner": a.owner,
            "version": a.version, "versions": list(a.versions), "visibility": a.visibility, "ref": a.ref,
            "download_url": _download_url(a)}


def _download_url(a: adapters_pb2.Adapter) -> str:
    at = f"@v{a.version}" if a.version else ""
    return f"/v1/adapters/{a.name}{at}/download" + (f"?owner={quote(a.owner, safe='')}" if a.owner else "")
