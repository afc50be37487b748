"""``longcat.v1.TrainingService``: validate a training job completely (nothing starts on bad input), queue it
for the Celery trainers, relay its events; and receive datasets for remote trainers (``UploadDataset``)."""

from __future__ import annotations

import shutil
import tarfile
import tempfile
import uuid
from pathlib import Path

from longcat.api.names import validate_name
from longcat.errors import InvalidArgument
from longcat.jobs.connection import redis_unavailable_as_error
from longcat.jobs.store import JobStore
from longcat.rpc.handler import rpc_method
from longcat.training import validate_datasets
from longcat.v1 import edit_pb2, training_pb2, training_pb2_grpc
from services.gateway.auth import ApiKeys
from services.gateway.edit import JobAccess
from longcat.api.training import Roots, TrainingSubmission

SERVICE = "longcat.v1.TrainingService"
KINDS = {edit_pb2.EDIT: "edit", edit_pb2.TRAINING: "training"}


class TrainingServicer(training_pb2_grpc.TrainingServiceServicer):
    def __init__(self, store: JobStore, auth: ApiKeys, roots: Roots, dispatch, tokenizer=None,
                 max_upload_mb: int = 4096, max_queue: int = 100):
        self.store = store
        self.auth = auth
        self.jobs = JobAccess(store, auth)
        self.roots = roots
        self.dispatch = dispatch  # job_id -> sends the Celery task
        self.tokenizer = tokenizer
        self.max_upload_bytes = max_upload_mb * 1024 * 1024
        self.max_queue = max_queue

    @rpc_method(SERVICE)
    def SubmitTraining(self, request, context):
        owner = self.auth.owner(context)
        submission = TrainingSubmission.from_request(request, self.roots, owner)
        # Every dataset problem at once (names paired both ways, captions, decodable images, separate caches).
        validate_datasets(submission.dataloader, submission.config.use_reference_captions, tokenizer=self.tokenizer)
        with redis_unavailable_as_error():
            job_id, created, _ = self.store.submit(
                "training", owner, request.SerializeToString(), request.request_id, max_queue=self.max_queue,
                fields={"adapter_name": submission.adapter_name, "per_owner": int(self.roots.per_owner),
                        "total_steps": submission.config.max_train_steps or 0})
            if created:
                self.dispatch(job_id)
            return self.store.to_proto(self.store.get(job_id))

    @rpc_method(SERVICE)
    def WatchJob(self, request, context):
        with redis_unavailable_as_error():
            yield from self.jobs.watch(request, context, "training")

    @rpc_method(SERVICE)
    def GetJob(self, request, context):
        with redis_unavailable_as_error():
            return self.store.to_proto(self.jobs.get(request.job_id, context, "training"))

    @rpc_method(SERVICE)
    def CancelJob(self, request, context):
        with redis_unavailable_as_error():
            return self.jobs.cancel(request, context, "training")

    @rpc_method(SERVICE)
    def ListJobs(self, request, context):
        owner = self.auth.owner(context)
        limit = request.limit if 0 < request.limit <= 1000 else 100
        state = "" if request.state == edit_pb2.JOB_STATE_UNSPECIFIED else edit_pb2.JobState.Name(request.state)
        with redis_unavailable_as_error():
            views = self.store.list(owner, KINDS.get(request.kind, ""), state, limit)
            return training_pb2.ListJobsResponse(jobs=[self.store.to_proto(v) for v in views])

    @rpc_method(SERVICE)
    def UploadDataset(self, request_iterator, context):
        owner = self.auth.owner(context)
        name, size = "", 0
        with tempfile.NamedTemporaryFile(prefix="upload-", suffix=".tar", dir=self.roots.data_area(owner)) as tmp:
            for chunk in request_iterator:
                if not name:
                    name = validate_name(chunk.name or "", "name")
                size += len(chunk.data)
                if size > self.max_upload_bytes:
                    raise InvalidArgument(f"the archive is over the {self.max_upload_bytes >> 20} MiB limit", "data")
                tmp.write(chunk.data)
            if not name:
                raise InvalidArgument("the first chunk must name the dataset", "name")
            tmp.flush()
            dest = self.roots.data_area(owner) / "uploads" / name
            files = _extract(Path(tmp.name), dest)
        folders = {p.name: str(p) for p in sorted(dest.iterdir()) if p.is_dir()}
        return training_pb2.UploadDatasetResponse(path=str(dest), folders=folders, bytes=size, files=files)


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
