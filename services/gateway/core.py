"""The gateway's one core, transport-free: submit / get / watch / cancel / list edits and training jobs,
upload datasets, read and prune adapters, each on behalf of a :class:`Caller`.

A front door (the gRPC servicers in ``edit.py`` / ``training.py`` / ``adapters.py``; later an HTTP door)
only turns its transport into calls here: it resolves the caller's identity (``auth.ApiKeys``), passes the
request message, the caller's deadline and an ``is_active`` probe, and maps :class:`LongCatError` to its own
status codes. Nothing here knows gRPC. Messages are the public ``longcat.v1`` types: they are the contract,
and an HTTP door maps JSON to them with protobuf's own json_format.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

from longcat import errors
from longcat.adapters import check as lora_check
from longcat.adapters.check import ModelShapes, check_lora, diffusers_header_bytes, parse_peft_config
from longcat.adapters.registry import AdapterInfo, AdapterRegistry
from longcat.api.bounds import check_ints, check_json_chars
from longcat.api.datasets import validate_datasets
from longcat.api.edit import Limits, validate_request
from longcat.api.edit_proto import priority_of, request_from_proto
from longcat.api.ids import check_event_id, check_job_id, check_request_id, check_url_length
from longcat.api.names import DIFFUSERS_WEIGHTS, PEFT_CONFIG, PEFT_WEIGHTS, validate_name
from longcat.api.prompts import check_prompt_length
from longcat.api.training import Roots, TrainingSubmission
from longcat.errors import Cancelled, DeadlineExceeded, InvalidArgument, LongCatError, NotFound, Unavailable
from longcat.jobs import payloads
from longcat.jobs.connection import redis_unavailable_as_error
from longcat.jobs.payload import payload_hash
from longcat.jobs.store import JobStore, NotReplicated
from longcat.logs import bind_job
from longcat.rpc.errors import STATUS
from longcat.tracing import job_fields
from longcat.v1 import adapters_pb2, edit_pb2, training_pb2
from services.gateway.adapter_refs import resolve_edit_adapters, viewer_of
from services.gateway.events import watch

TERMINAL = (edit_pb2.SUCCEEDED, edit_pb2.FAILED, edit_pb2.CANCELLED)
KINDS = {edit_pb2.EDIT: "edit", edit_pb2.TRAINING: "training"}


@dataclass(frozen=True)
class Caller:
    """Who calls, as a front door established it (``auth.ApiKeys``)."""

    owner: str
    authenticated: bool = False  # API keys on: ownership is enforced (adapters, per-owner areas)
    key: str = field(default="", repr=False)  # the caller's API key ('' with keys off): signs its webhooks
    admin: bool = False  # an owner named by --admin-owners: manages every tenant's adapters


class JobFailed(LongCatError):
    """A job's terminal failure, re-raised to a blocking caller with the job's own status code."""

    def __init__(self, view):
        super().__init__(view.reason or view.state.lower())
        self.code = view.error_code if view.error_code in STATUS else "INTERNAL"


@dataclass
class GatewayConfig:
    limits: Limits
    max_queue: int = 1000           # edit jobs waiting before RESOURCE_EXHAUSTED
    max_training_queue: int = 100
    retry_after_s: float = 2.0      # hint sent with RESOURCE_EXHAUSTED
    max_active_per_tenant: int = 250    # one API key owner's queued + running edits (0 = no per-tenant limit)
    max_training_per_tenant: int = 10   # one API key owner's queued + running training jobs (0 = none)
    max_upload_bytes: int = 4096 << 20
    max_adapter_bytes: int = 2048 << 20   # largest uploaded LoRA file
    reference_ttl_s: float = 7 * 86400    # a queued edit's reference image (a blob) is kept this long


class GatewayCore:
    def __init__(self, store: JobStore, config: GatewayConfig, roots: Roots | None = None,
                 dispatch: Callable[[str], None] | None = None, registry: AdapterRegistry | None = None,
                 tokenizer=None, model_shapes: ModelShapes | None = None, webhooks=None):
        self.store = store
        self.config = config
        self.roots = roots
        self.dispatch = dispatch    # job_id -> hands a training job to the trainers (Celery)
        self.registry = registry
        self.tokenizer = tokenizer  # counts prompt tokens (api.prompts.PromptTokenizer); None = not checked
        self.model_shapes = model_shapes  # the served transformer's linear layers; None = uploads refused
        self.webhooks = webhooks    # webhooks.Webhooks: callback_url delivery; None = callback URLs refused

    # ---- jobs of either kind: visible only to their owner (others get NOT_FOUND: existence is not leaked) ----

    def _view(self, caller: Caller, job_id: str, kind: str | None):
        bind_job(job_id[:128])  # the rest of this call's log lines name the job asked for (found or not)
        view = self.store.get(check_job_id(job_id))  # a malformed id never reaches a Redis key
        if view is None or view.owner != caller.owner or (kind and view.kind != kind):
            raise NotFound(f"no job {job_id!r}", "job_id")
        return view

    def get_job(self, caller: Caller, job_id: str, kind: str | None = None) -> edit_pb2.Job:
        with redis_unavailable_as_error():
            return self.store.to_proto(self._view(caller, job_id, kind))

    def watch_job(self, caller: Caller, job_id: str, after_event_id: str, kind: str | None,
                  is_active: Callable[[], bool]) -> Iterator[edit_pb2.JobEvent]:
        after_event_id = check_event_id(after_event_id)
        with redis_unavailable_as_error():
            self._view(caller, job_id, kind)
            yield from watch(self.store, job_id, after_event_id, is_active)

    def cancel_job(self, caller: Caller, job_id: str, kind: str | None = None) -> edit_pb2.Job:
        with redis_unavailable_as_error():
            self._view(caller, job_id, kind)
            self.store.cancel(job_id, kind or "edit")
            return self.store.to_proto(self.store.get(job_id))

    def list_jobs(self, caller: Caller, kind: int = 0, state: int = 0, limit: int = 0,
                  before: float = 0.0) -> list[edit_pb2.Job]:
        """Newest first; ``before`` (a created_at): only older jobs, the next page."""
        limit = limit if 0 < limit <= 1000 else 100
        if kind and kind not in KINDS:  # proto3 enums are open: an unknown number arrives as it is
            raise InvalidArgument(f"must be EDIT or TRAINING (or unset), got {kind}", "kind")
        if state not in edit_pb2.JobState.values():
            raise InvalidArgument(f"is not a job state, got {state}", "state")
        state_name = "" if state == edit_pb2.JOB_STATE_UNSPECIFIED else edit_pb2.JobState.Name(state)
        with redis_unavailable_as_error():
            views = self.store.list(caller.owner, KINDS.get(kind, ""), state_name, 1000 if before else limit)
            views = [v for v in views if not before or v.created_at < before][:limit]
            return [self.store.to_proto(v) for v in views]

    # ---- webhooks: checked before anything is queued, followed once the job exists ----

    def _check_callback(self, url: str) -> None:
        if not url:
            return
        check_url_length(url, "callback_url")
        if self.webhooks is None:
            raise InvalidArgument("this gateway calls no webhooks", "callback_url")
        self.webhooks.check(url, "callback_url")

    def _follow_callback(self, caller: Caller, job_id: str, url: str, progress: bool, created: bool) -> None:
        if url and created:
            self.webhooks.follow(job_id, url, caller.key, progress)

    # ---- edits ----

    def submit_edit(self, caller: Caller, request: edit_pb2.EditRequest, deadline: float = 0.0) -> edit_pb2.Job:
        """Validate (the engine's own rules), resolve the seed, queue. ``deadline``: epoch seconds, 0 = none."""
        check_request_id(request.request_id)
        req = validate_request(request_from_proto(request), self.config.limits)
        priority = priority_of(request)  # routed to that priority's stream
        self._check_callback(request.callback_url)
        if self.tokenizer is not None:
            check_prompt_length(self.tokenizer, req.prompt, "prompt", request.truncate_prompt)
            check_prompt_length(self.tokenizer, req.negative_prompt, "negative_prompt", request.truncate_prompt)
        # The seed is resolved here, so a retried delivery renders the same image.
        msg = edit_pb2.EditRequest()
        msg.CopyFrom(request)
        msg.seed = req.seed
        with redis_unavailable_as_error(), self._retry_hint():
            resolve_edit_adapters(self.registry, caller, msg)  # -> canonical owner/name@vN, or NOT_FOUND
            # The reference image goes to the blob store; Redis keeps the request without it and the reference.
            blob = payloads.stash_reference(self.store.blobs, msg, self.config.reference_ttl_s)
            try:
                job_id, created, _ = self.store.submit("edit", caller.owner, msg.SerializeToString(),
                                                       request.request_id, deadline, self.config.max_queue,
                                                       fields={"total_steps": req.num_inference_steps,
                                                               "priority": priority, **blob, **job_fields()},
                                                       priority=priority, payload_hash=payload_hash("edit", request),
                                                       max_active=self._quota(caller, "edit"))
                bind_job(job_id)
            except LongCatError as exc:
                # Refused (queue full, quota, request_id reused), or recorded without replicas' confirmation
                # (kept only if it is ours). A Redis error lands elsewhere: the job may exist, so its blob
                # stays (its TTL is the backstop).
                if not (isinstance(exc, NotReplicated) and exc.created):
                    payloads.release(self.store.blobs, blob, payloads.IMAGE)
                raise
            if not created:  # the same request_id again: the first job keeps its own reference
                payloads.release(self.store.blobs, blob, payloads.IMAGE)
            self._follow_callback(caller, job_id, request.callback_url, request.callback_progress, created)
            return self.store.to_proto(self.store.get(job_id))

    def edit(self, caller: Caller, request: edit_pb2.EditRequest, deadline: float,
             is_active: Callable[[], bool]) -> edit_pb2.EditResult:
        """Submit and wait for the result; a caller that goes away cancels its job."""
        job = self.submit_edit(caller, request, deadline)
        with redis_unavailable_as_error():
            for ev in watch(self.store, job.id, "0", is_active):
                if ev.HasField("job") and ev.job.state in TERMINAL:
                    break
        return self.edit_outcome(job.id, is_active())

    def edit_outcome(self, job_id: str, active: bool) -> edit_pb2.EditResult:
        """A blocking edit's answer once its wait ended (any door): the result, or the job's error; a caller
        no longer ``active`` has its job cancelled."""
        with redis_unavailable_as_error():
            view = self.store.get(job_id)
        if not active:  # the caller went away: don't spend a GPU on a result nobody reads
            with redis_unavailable_as_error():
                self.store.cancel(job_id)
            raise Cancelled("the caller went away")
        if view is None:
            raise NotFound("the job expired before its result was read", "job_id")
        if view.state == "SUCCEEDED":
            job = self.store.to_proto(view)
            if not job.result.image:  # its result blob is gone (the reason says so)
                raise NotFound(job.reason or "the job's result image is no longer stored", "job_id")
            return job.result
        if view.error_code == "DEADLINE_EXCEEDED":
            raise DeadlineExceeded(view.reason)
        raise JobFailed(view)

    def _quota(self, caller: Caller, kind: str) -> int:
        """Per-tenant limits apply to API key owners; with keys off there is one caller, and the global
        queue limit is the only one."""
        if not caller.authenticated:
            return 0
        return self.config.max_active_per_tenant if kind == "edit" else self.config.max_training_per_tenant

    @contextlib.contextmanager
    def _retry_hint(self):
        """RESOURCE_EXHAUSTED (a full queue, a tenant's full quota) carries when to retry (gRPC trailer
        ``retry-after-ms``; the HTTP door turns it into ``Retry-After``)."""
        try:
            yield
        except LongCatError as exc:
            if exc.code == "RESOURCE_EXHAUSTED":
                exc.trailers = {"retry-after-ms": int(self.config.retry_after_s * 1000)}
            raise

    # ---- training ----

    def submit_training(self, caller: Caller, request: training_pb2.SubmitTrainingRequest) -> edit_pb2.Job:
        """Validate the whole job (nothing starts on bad input), queue it, hand it to the trainers."""
        if self.dispatch is None:
            raise Unavailable("this gateway accepts no training jobs: it runs without Celery (install "
                              "longcat-edit-stack[train] on it)")
        check_request_id(request.request_id)
        check_json_chars(request.config_json, "config_json")
        check_json_chars(request.dataloader_json, "dataloader_json")
        submission = TrainingSubmission.from_request(request, self.roots, caller.owner)
        # Every number of the job fits what it is stored and reported as (proto int32): no ghost job later.
        check_ints(submission.config, "config_json")
        check_ints(submission.dataloader, "dataloader_json")
        # Every dataset problem at once (names paired both ways, captions, decodable images, separate caches).
        validate_datasets(submission.dataloader, submission.config.use_reference_captions, tokenizer=self.tokenizer)
        self._check_callback(request.callback_url)
        with redis_unavailable_as_error(), self._retry_hint():
            try:
                job_id, created, _ = self.store.submit(
                    "training", caller.owner, request.SerializeToString(), request.request_id,
                    max_queue=self.config.max_training_queue,
                    fields={"adapter_name": submission.adapter_name, "per_owner": int(self.roots.per_owner),
                            "total_steps": submission.config.max_train_steps or 0, **job_fields()},
                    payload_hash=payload_hash("training", request), max_active=self._quota(caller, "training"))
                bind_job(job_id)
            except NotReplicated as exc:  # recorded but not confirmed: hand it over anyway, so that a retry
                if exc.created:           # with the same request_id (which returns this job) finds it running
                    self.dispatch(exc.job_id)
                raise
            if created:
                self.dispatch(job_id)
            self._follow_callback(caller, job_id, request.callback_url, request.callback_progress, created)
            return self.store.to_proto(self.store.get(job_id))

    def upload_dataset(self, caller: Caller,
                       chunks: Iterable[training_pb2.UploadDatasetChunk]) -> training_pb2.UploadDatasetResponse:
        """A .tar(.gz) streamed in chunks (the first names the dataset) -> ``<data area>/uploads/<name>/``."""
        name, size, limit = "", 0, self.config.max_upload_bytes
        with tempfile.NamedTemporaryFile(prefix="upload-", suffix=".tar", dir=self.roots.data_area(caller.owner)) as tmp:
            for chunk in chunks:
                if not name:
                    name = validate_name(chunk.name or "", "name")
                size += len(chunk.data)
                if size > limit:
                    raise InvalidArgument(f"the archive is over the {limit >> 20} MiB limit", "data")
                tmp.write(chunk.data)
            if not name:
                raise InvalidArgument("the first chunk must name the dataset", "name")
            tmp.flush()
            dest = self.roots.data_area(caller.owner) / "uploads" / name
            files = _extract(Path(tmp.name), dest)
        folders = {p.name: str(p) for p in sorted(dest.iterdir()) if p.is_dir()}
        return training_pb2.UploadDatasetResponse(path=str(dest), folders=folders, bytes=size, files=files)

    # ---- adapters: owned per tenant, versioned; each caller sees its own plus those shared with it ----

    def list_adapters(self, caller: Caller) -> list[adapters_pb2.Adapter]:
        with redis_unavailable_as_error():
            return [adapter_to_proto(a) for a in self.registry.list(viewer_of(caller))]

    def get_adapter(self, caller: Caller, name: str) -> adapters_pb2.Adapter:
        with redis_unavailable_as_error():
            return adapter_to_proto(self.registry.resolve(name, viewer_of(caller), "name"))

    def delete_adapter(self, caller: Caller, name: str) -> adapters_pb2.Adapter:
        """``name@vN``: that version; ``name``: every version. The owner's or an admin's call."""
        with redis_unavailable_as_error():
            return adapter_to_proto(self.registry.delete(name, field="name", viewer=viewer_of(caller)))

    def set_adapter_visibility(self, caller: Caller, name: str, visibility: str) -> adapters_pb2.Adapter:
        with redis_unavailable_as_error():
            return adapter_to_proto(self.registry.set_visibility(name, visibility, viewer_of(caller), "name"))

    def upload_adapter(self, caller: Caller, name: str, chunks: Iterable[bytes], overwrite: bool = False,
                       peft_config: str = "") -> adapters_pb2.Adapter:
        """A LoRA file (diffusers or PEFT safetensors) streamed in ``chunks`` -> checked against the served
        model from its header, then published as the next version of the caller's ``name``. Nothing is stored
        when any check fails."""
        name = validate_name(name, "name")  # uploads go into the caller's own namespace: no owner/ or @v
        if self.model_shapes is None:
            raise errors.FailedPrecondition("this gateway cannot check adapters against the model: start it with "
                                            "--model (a local model folder or tiny)")
        config = parse_peft_config(peft_config or "", "peft_config")
        with redis_unavailable_as_error(), self.registry.claim(name, owner=caller.owner):
            self._may_write(caller, name, overwrite)
            limit = self.config.max_adapter_bytes
            with tempfile.TemporaryDirectory(prefix="adapter-upload-") as tmp:
                staged, size = Path(tmp) / "upload.safetensors", 0
                with staged.open("wb") as out:
                    for data in chunks:
                        size += len(data)
                        if size > limit:
                            raise errors.TooLarge(f"the adapter is over the {limit >> 20} MiB limit", "file")
                        out.write(data)
                lora = check_lora(lora_check.read_header_file(staged, "file"), self.model_shapes, config, "file")
                staged.rename(Path(tmp) / (PEFT_WEIGHTS if lora.format == "peft" else DIFFUSERS_WEIGHTS))
                if lora.format == "peft" and config is not None:
                    (Path(tmp) / PEFT_CONFIG).write_text(peft_config)
                self._may_write(caller, name, overwrite)  # a training job may have published it meanwhile
                return adapter_to_proto(self.registry.publish(name, tmp, owner=caller.owner))

    def _may_write(self, caller: Caller, name: str, overwrite: bool) -> None:
        """Another tenant's ``name`` is another adapter; the caller's own takes a new version only when asked."""
        if self.registry.exists(name, owner=caller.owner) and not overwrite:
            raise errors.AlreadyExists(f"adapter {name!r} already exists (set overwrite to publish a new "
                                       "version of it)", "name")

    def download_adapter(self, caller: Caller, name: str) -> "AdapterDownload":
        """The adapter as one diffusers-format safetensors file (a PEFT file's header is rewritten to
        diffusers keys; its tensor bytes are streamed unchanged)."""
        viewer = viewer_of(caller)
        with redis_unavailable_as_error():
            info = self.registry.resolve(name, viewer, "name")
        if not viewer.may_download(info.owner, info.visibility):
            raise errors.PermissionDenied(f"adapter {name!r} is shared for use in edits, not for download (its "
                                          "owner may make it public)", "name")
        name = info.ref
        files = self.registry.store.get(name, "name").files
        weights = DIFFUSERS_WEIGHTS if DIFFUSERS_WEIGHTS in files else PEFT_WEIGHTS
        f = self.registry.store.open(name, weights)
        try:
            size = os.fstat(f.fileno()).st_size
            header = lora_check.read_header(f, size, "name")
            if weights == DIFFUSERS_WEIGHTS:
                head, start = b"", 0
            else:
                config = None
                if PEFT_CONFIG in files:
                    with self.registry.store.open(name, PEFT_CONFIG) as c:
                        config = parse_peft_config(c.read().decode(errors="replace"), "name")
                head, start = diffusers_header_bytes(header, config), header.data_start
        except BaseException:
            f.close()
            raise
        return AdapterDownload(adapter_to_proto(info), DIFFUSERS_WEIGHTS, len(head) + size - start, head, f, start)


@dataclass
class AdapterDownload:
    adapter: adapters_pb2.Adapter
    filename: str
    total_bytes: int
    head: bytes        # a rewritten header, when converting; b"" for a file sent as stored
    file: BinaryIO
    start: int         # where in ``file`` the bytes after ``head`` begin

    def chunks(self, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        with self.file:
            if self.head:
                yield self.head
            yield from lora_check.iter_file(self.file, self.start, chunk_size)



def adapter_to_proto(info: AdapterInfo) -> adapters_pb2.Adapter:
    return adapters_pb2.Adapter(name=info.name, rank=info.rank, alpha=info.alpha, format=info.format,
                                size_bytes=info.size_bytes, created_at=info.created_at, job_id=info.job_id,
                                owner=info.owner, version=info.version, visibility=info.visibility,
                                versions=info.versions, ref=info.ref)


def deadline_from_remaining(remaining: float | None, max_s: float = 30 * 86400) -> float:
    """A door's "seconds left" (None or huge = no deadline) -> epoch seconds, 0 = none."""
    return time.time() + remaining if remaining is not None and remaining < max_s else 0.0


def _extract(archive: Path, dest: Path) -> int:
    """Unpack regular files and folders only, never outside ``dest``; replaces a previous upload atomically."""
    staging = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    count = 0
    try:
        try:
            tar = tarfile.open(archive, mode="r:*")
        except tarfile.TarError as exc:
            raise InvalidArgument(f"is not a .tar or .tar.gz archive: {exc}", "data") from exc
        with tar:
            for member in tar:
                parts = Path(member.name).parts
                if member.name.startswith("/") or ".." in parts:
                    raise InvalidArgument(f"archive member {member.name!r} would land outside the dataset", "data")
                if not (member.isfile() or member.isdir()):
                    raise InvalidArgument(f"archive member {member.name!r} is not a regular file or folder "
                                          "(links and devices are refused)", "data")
                tar.extract(member, staging, filter="data")
                count += member.isfile()
        old = None
        if dest.exists():
            old = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:8]}.old"
            dest.rename(old)
        staging.rename(dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return count
