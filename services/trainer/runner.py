"""Runs one training job inside a trainer worker: lease, claim, train with events, publish, finish.

A job redelivered after its worker died resumes from its last checkpoint; the lease makes a second
concurrent run impossible; attempts are bounded (then FAILED with the last error).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from longcat.adapters.registry import AdapterRegistry
from longcat.api.training import TrainingSubmission
from longcat.errors import InvalidArgument, LongCatError, NotFound
from longcat.jobs.connection import REDIS_ERRORS
from longcat.jobs.store import JobStore
from longcat.logs import job_context, request_id
from longcat.tracing import set_error, span
from longcat.v1 import training_pb2

log = logging.getLogger("longcat.trainer")

# Training-side errors that no retry can fix.
PERMANENT = (InvalidArgument, NotFound)


class LeaseLost(Exception):
    pass


@dataclass
class TrainerContext:
    """What a trainer worker process holds: connections, roots, and a warm model."""

    store: JobStore
    registry: AdapterRegistry
    roots: "object"                       # longcat.api.training.Roots
    model: str = "tiny"
    device: str | None = None
    precision: str | None = None
    encoder: str = ""                     # encoder service address for embeddings_source=encoder_service
    lease_ttl_s: float = 6.0
    max_attempts: int = 3
    consumer: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    checkpoint_every_s: float = 0.0       # also checkpoint when this long passed since the last one (0 = off)
    running: dict = field(default_factory=dict)
    shutting_down: threading.Event = field(default_factory=threading.Event)  # set on the worker's SIGTERM
    _components: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def components(self, model: str, precision: str):
        """The worker keeps the last model it trained on loaded (a warm worker starts the next job at once)."""
        from longcat.models.loading import ALL_COMPONENTS, load_components

        key = (model, precision)
        with self._lock:
            if key not in self._components:
                self._components.clear()
                self._components[key] = load_components(model, ALL_COMPONENTS, device=self.device,
                                                        precision=precision)
            return self._components[key]


def run_training_job(ctx: TrainerContext, job_id: str) -> str:
    """Returns what happened: the terminal state, 'busy' (another worker holds it) or 'retry'. Every log line
    meanwhile carries the job id and tenant; the job's span continues the submitting call's trace."""
    view = ctx.store.get(job_id)
    owner = view.owner if view else None
    with job_context(job_id, owner), span("trainer.job", view.extra.get("traceparent", "") if view else "",
                                          attributes={"longcat.job_id": job_id, "longcat.tenant": owner}) as s:
        outcome = _run(ctx, job_id, view)
        if s is not None:
            s.set_attribute("longcat.outcome", outcome)
            if outcome in ("FAILED", "retry", "lost"):
                set_error(s, RuntimeError(outcome))
        return outcome


def _run(ctx: TrainerContext, job_id: str, view) -> str:
    from longcat.api.training_errors import ConfigError, DatasetError

    if view is None or view.terminal:
        return view.state if view else "MISSING"
    token = f"{ctx.consumer}:{os.getpid()}-{uuid.uuid4().hex[:8]}"
    lease = ctx.store.lease(job_id, token, ctx.lease_ttl_s)
    ctx.store.mark_active(job_id)  # before the lease: the reaper must always see a held job
    if not lease.acquire():
        return "busy"  # someone runs it; if it dies, the reaper dispatches it again
    rid = request_id.set(job_id)
    ctx.running[job_id] = token
    try:
        outcome, attempts = ctx.store.claim(job_id, token, ctx.max_attempts, kind="training")
        if outcome != "RUNNING":
            ctx.store.unmark_active(job_id)
            return outcome
        raw = ctx.store.request_bytes(job_id)
        if raw is None:
            raise NotFound("the job's request expired before it ran", "job_id")
        # Confined exactly as the gateway confined it (per-owner areas when its API keys were on).
        roots = dataclasses.replace(ctx.roots, per_owner=view.extra.get("per_owner") == "1")
        submission = TrainingSubmission.from_request(training_pb2.SubmitTrainingRequest.FromString(raw),
                                                     roots, view.owner, job_id)
        config = submission.config
        from longcat.training.checkpoint import list_checkpoints

        if list_checkpoints(config.output_dir):
            # This job ran before (its worker died, or paused at shutdown): continue from its last checkpoint.
            config.resume_from_checkpoint = "latest"

        def on_event(event: dict) -> None:
            try:
                for fields in _event_fields(event):
                    if not ctx.store.progress(job_id, token, fields):
                        raise LeaseLost()
                if event.get("type") == "step":
                    ctx.store.update(job_id, token, step=event["step"], total_steps=event["total"])
            except REDIS_ERRORS:
                pass  # a Redis blip costs events, not the run (the lease thread keeps trying; losing it stops us)

        def should_stop() -> bool:
            if lease.lost.is_set():
                raise LeaseLost()
            try:
                return ctx.store.cancel_requested(job_id)
            except REDIS_ERRORS:
                return False

        # Imported here, not first: on a cold worker it takes seconds, and until the job is marked active above
        # only its broker message (already taken) says that it is being run.
        from longcat.training import Trainer

        try:
            components = ctx.components(config.pretrained_model_name_or_path, config.base_model_precision)
        except Exception as exc:
            raise _unloadable(config.pretrained_model_name_or_path, exc) from exc
        embedder = _embedder(ctx, config, components)
        result = Trainer(config, submission.dataloader, on_event=on_event, should_stop=should_stop,
                         should_pause=ctx.shutting_down.is_set, components=components, embedder=embedder,
                         checkpoint_every_s=ctx.checkpoint_every_s).run()
        if result.status == "paused":
            # This worker is going away: the checkpoint is written, the lease is released below, and the
            # reaper of a live worker dispatches the job again; it resumes from this step. A pause is not a
            # failure, so it does not use up one of the job's attempts.
            ctx.store.pause(job_id, token, f"paused at step {result.step}: its worker is shutting down; "
                                           "resuming elsewhere")
            return "paused"
        if result.status == "cancelled":
            ctx.store.finish(job_id, token, "CANCELLED", "CANCELLED", f"cancelled at step {result.step}")
            return "CANCELLED"
        info = ctx.registry.publish(submission.adapter_name, result.adapter_path, owner=view.owner, job_id=job_id)
        ok = ctx.store.finish(job_id, token, "SUCCEEDED", fields={
            "adapter_name": info.name, "adapter_ref": info.ref, "step": result.step, "total_steps": result.total_steps,
            "adapter_path": str(result.adapter_path), "output_dir": str(config.output_dir)})
        log.info("training job done", extra={"adapter": info.name, "step": result.step, "recorded": ok})
        return "SUCCEEDED"
    except LeaseLost:
        log.warning("lease lost: another worker owns the job now; stopping")
        return "lost"
    except (ConfigError, DatasetError, *PERMANENT) as exc:
        ctx.store.finish(job_id, token, "FAILED", getattr(exc, "code", "INVALID_ARGUMENT"), str(exc))
        return "FAILED"
    except REDIS_ERRORS:
        raise
    except Exception as exc:  # noqa: BLE001 - transient: recorded, released; the reaper dispatches it again
        code = exc.code if isinstance(exc, LongCatError) else "INTERNAL"
        log.exception("training attempt failed; it will be retried")
        ctx.store.record_error(job_id, token, code, f"{type(exc).__name__}: {exc}")
        return "retry"
    finally:
        ctx.running.pop(job_id, None)
        # The lease first: a Redis error in the lines below (a failover in progress) must not leave this
        # attempt's lease renewing forever, which would hide the job from the reaper for good.
        lease.release()
        try:
            view = ctx.store.get(job_id)
            if view is None or view.terminal:
                ctx.store.unmark_active(job_id)
        except REDIS_ERRORS:
            pass  # the reaper unmarks a finished job itself, and dispatches an unfinished one again
        request_id.reset(rid)


def _unloadable(model: str, exc: Exception) -> Exception:
    """A model load error no retry can fix -> INVALID_ARGUMENT (the job fails at once, not after every attempt):
    a local folder or tiny model that does not load, a hub repo / revision / file that does not exist, or the
    hub switched off here with the model not in the cache. Anything else (a network blip) stays retryable."""
    if isinstance(exc, LongCatError):
        return exc
    try:
        from huggingface_hub.errors import (
            EntryNotFoundError,
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:  # pragma: no cover - huggingface_hub comes with diffusers
        return exc
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    local = os.path.isdir(os.path.expanduser(model)) or model.split(":", 1)[0] in ("tiny", "tiny-turbo")
    permanent = isinstance(exc, (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError, GatedRepoError))
    if local and isinstance(exc, (OSError, ValueError, KeyError)) or permanent or \
            (offline and isinstance(exc, (LocalEntryNotFoundError, OSError))):
        return InvalidArgument(f"{model!r} cannot be loaded: {type(exc).__name__}: {str(exc)[:500]}",
                               "config_json.pretrained_model_name_or_path")
    return exc


def _embedder(ctx: TrainerContext, config, components):
    if config.embeddings_source != "encoder_service":
        return None  # the trainer's default: in-process, through the shared conditioning module
    from services.trainer.embedder import EncoderServiceEmbedder

    return EncoderServiceEmbedder(config.encoder_address or ctx.encoder, components.fingerprint)


def _event_fields(event: dict) -> list[dict]:
    """Trainer events -> entries of the job's Redis event stream (what WatchJob relays)."""
    kind = event.get("type")
    if kind == "step":
        return [{"kind": "training", "state": "RUNNING", "step": event["step"], "total": event["total"],
                 "loss": event["loss"], "lr": event["lr"], "eta_s": event.get("eta_s", 0.0)}]
    if kind == "checkpoint":
        return [{"kind": "checkpoint", "state": "RUNNING", "step": event["step"], "path": event["path"]}]
    if kind == "validation":  # one event per rendered edit, the PNG inline
        prompts = event.get("prompts") or []
        out = []
        for i, path in enumerate(event.get("images") or []):
            try:
                png = Path(path).read_bytes()
            except OSError:
                continue
            out.append({"kind": "validation", "state": "RUNNING", "step": event["step"], "index": i,
                        "prompt": prompts[i] if i < len(prompts) else "", "image_png": png})
        return out
    if kind == "result_images":  # loss.png and validation/grid.png, inline like validation edits
        out = []
        for path, name in zip(event.get("paths") or [], event.get("names") or []):
            try:
                out.append({"kind": "result_image", "state": "RUNNING", "name": name,
                            "image_png": Path(path).read_bytes()})
            except OSError:
                continue
        return out
    if kind in ("phase", "start", "caching", "cancelled", "done"):
        return [{"kind": "message", "state": "RUNNING", "message": json.dumps(event, default=str)}]
    return []
