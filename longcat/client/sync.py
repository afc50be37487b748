"""``LongCatClient``: the Python client of the gateway (edits, jobs, training, adapters).

    with LongCatClient("127.0.0.1:50051") as lc:
        result = lc.edit("cat.png", "make the cat a dog", steps=30, on_progress=print)
        open("dog.png", "wb").write(result.image)

UNAVAILABLE is retried with exponential backoff (every mutating call carries an idempotency key, so a retry
never runs a job twice); errors are the ``longcat.errors`` classes, with the field at fault.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Iterator

import grpc

from longcat.client import requests as rq
from longcat.client.errors import from_rpc_error
from longcat.client.reach import is_connect_failure, no_gateway, nothing_listening
from longcat.errors import InvalidArgument, NotFound, Unavailable
from longcat.rpc.channel import make_channel
from longcat.v1 import adapters_pb2, adapters_pb2_grpc, edit_pb2, edit_pb2_grpc, training_pb2, training_pb2_grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"
TERMINAL = (edit_pb2.SUCCEEDED, edit_pb2.FAILED, edit_pb2.CANCELLED)


def resolve_address(address: str | None) -> str:
    return address or os.environ.get("LONGCAT_GATEWAY") or DEFAULT_ADDRESS


class LongCatClient:
    def __init__(self, address: str | None = None, api_key: str | None = None, timeout: float | None = None,
                 retries: int = 5, backoff_s: float = 0.2, channel: grpc.Channel | None = None):
        self.address = resolve_address(address)
        self.channel = channel or make_channel(self.address)
        key = api_key if api_key is not None else os.environ.get("LONGCAT_API_KEY")
        self.metadata = [("authorization", f"Bearer {key}")] if key else []
        self.timeout = timeout
        self.retries = retries
        self.backoff_s = backoff_s
        self.connected = False  # set by the first answer; until then a refused connection fails at once
        self.edits = edit_pb2_grpc.EditServiceStub(self.channel)
        self.training = training_pb2_grpc.TrainingServiceStub(self.channel)
        self.adapters = adapters_pb2_grpc.AdapterServiceStub(self.channel)

    # -- plumbing --------------------------------------------------------------------------------------

    def _call(self, method, request, timeout: float | None = None):
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                answer = method(request, timeout=timeout or self.timeout, metadata=self.metadata)
                self.connected = True
                return answer
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE:
                    self.connected = True
                    raise from_rpc_error(err) from None
                if not self.connected and nothing_listening(self.address):
                    raise no_gateway(self.address) from None
                if attempt == self.retries:
                    if is_connect_failure(err.details()):
                        raise no_gateway(self.address) from None
                    raise from_rpc_error(err) from None
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "LongCatClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- edits -----------------------------------------------------------------------------------------

    def edit(self, image, prompt: str, *, on_progress: Callable[[edit_pb2.JobEvent], None] | None = None,
             timeout: float | None = None, **options) -> edit_pb2.EditResult:
        """Edit ``image`` (bytes, path or PIL image) by ``prompt``; returns the result with PNG bytes.

        With ``on_progress``, the job is submitted and its events are passed to the callback as they come.
        Options: negative_prompt, width, height, steps, guidance, seed, adapters (["name", ("name", 0.5)]),
        request_id, truncate_prompt, preview_every.
        """
        request = rq.edit_request(image, prompt, **options)
        if on_progress is None:
            return self._call(self.edits.Edit, request, timeout)
        job = self._call(self.edits.SubmitEdit, request, timeout)
        final = None
        for ev in self.watch(job.id):
            on_progress(ev)
            if ev.HasField("job"):
                final = ev.job
        final = final if final is not None and final.state in TERMINAL else self.get_job(job.id)
        if final.state != edit_pb2.SUCCEEDED:
            raise _job_error(final)
        return final.result

    def submit_edit(self, image, prompt: str, **options) -> edit_pb2.Job:
        return self._call(self.edits.SubmitEdit, rq.edit_request(image, prompt, **options))

    # -- jobs (edit or training: the right service is found from the id) -------------------------------

    def _stubs(self, kind: str | None):
        if kind == "edit":
            return [self.edits]
        if kind == "training":
            return [self.training]
        return [self.edits, self.training]

    def get_job(self, job_id: str, kind: str | None = None) -> edit_pb2.Job:
        return self._either(kind, lambda s: self._call(s.GetJob, edit_pb2.GetJobRequest(job_id=job_id)))

    def cancel_job(self, job_id: str, kind: str | None = None) -> edit_pb2.Job:
        return self._either(kind, lambda s: self._call(s.CancelJob, edit_pb2.CancelJobRequest(job_id=job_id)))

    def _either(self, kind, call):
        last = None
        for stub in self._stubs(kind):
            try:
                return call(stub)
            except NotFound as exc:
                last = exc
        raise last

    def watch(self, job_id: str, after: str = "", kind: str | None = None) -> Iterator[edit_pb2.JobEvent]:
        """The job's events until its terminal one; a dropped connection resumes after the last event seen."""
        stub = self._stub_for(job_id, kind)
        delay = self.backoff_s
        attempts = 0
        while True:
            try:
                for ev in rq.iter_terminal(stub.WatchJob(edit_pb2.WatchJobRequest(job_id=job_id, after_event_id=after),
                                                         metadata=self.metadata)):
                    if ev.event_id:
                        after = ev.event_id
                    attempts = 0
                    yield ev
                    if ev.HasField("job") and ev.job.state in TERMINAL:
                        return
                return
            except grpc.RpcError as err:
                attempts += 1
                if err.code() != grpc.StatusCode.UNAVAILABLE or attempts > self.retries:
                    raise from_rpc_error(err) from None
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _stub_for(self, job_id: str, kind: str | None):
        if kind:
            return self._stubs(kind)[0]
        job = self.get_job(job_id)
        return self.training if job.kind == edit_pb2.TRAINING else self.edits

    def list_jobs(self, kind: str | None = None, state: str | None = None, limit: int = 100) -> list[edit_pb2.Job]:
        req = training_pb2.ListJobsRequest(limit=limit)
        if kind:
            req.kind = edit_pb2.JobKind.Value(kind.upper())
        if state:
            req.state = edit_pb2.JobState.Value(state.upper())
        return list(self._call(self.training.ListJobs, req).jobs)

    # -- training --------------------------------------------------------------------------------------

    def upload_dataset(self, name: str, folders: dict[str, str | Path]) -> training_pb2.UploadDatasetResponse:
        try:
            return self.training.UploadDataset(rq.tar_chunks(name, {k: Path(v) for k, v in folders.items()}),
                                               timeout=self.timeout, metadata=self.metadata)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None

    def train(self, config, dataloader=None, name: str = "", upload: str = "auto",
              base_dir: str | Path | None = None) -> edit_pb2.Job:
        """Submit the quickstart's config.json + dataloader JSON (paths, text or parsed objects).

        ``upload``: "never" sends the paths as they are (the trainer's machine sees them); "always" uploads
        the local dataset folders first; "auto" (default) tries the paths in place and uploads when the
        gateway refuses them (a remote gateway, or folders outside its data root).
        """
        from longcat.client.datasets import LocalTrainingJob

        job = LocalTrainingJob.load(config, dataloader, name, base_dir)
        if upload != "never":
            job.absolutize()
        if upload == "always":
            job.upload(self)
        try:
            return self._call(self.training.SubmitTraining, job.request())
        except InvalidArgument as exc:
            if upload != "auto" or not job.can_upload() or not job.refused_paths(exc):
                raise
        job.upload(self)
        return self._call(self.training.SubmitTraining, job.request())

    # -- adapters --------------------------------------------------------------------------------------

    def list_adapters(self) -> list[adapters_pb2.Adapter]:
        return list(self._call(self.adapters.ListAdapters, adapters_pb2.ListAdaptersRequest()).adapters)

    def get_adapter(self, name: str) -> adapters_pb2.Adapter:
        return self._call(self.adapters.GetAdapter, adapters_pb2.GetAdapterRequest(name=name))

    def delete_adapter(self, name: str) -> adapters_pb2.Adapter:
        return self._call(self.adapters.DeleteAdapter, adapters_pb2.DeleteAdapterRequest(name=name))

    def set_adapter_visibility(self, name: str, visibility: str) -> adapters_pb2.Adapter:
        """``private``, ``shared`` (other tenants may use it) or ``public`` (and download it)."""
        return self._call(self.adapters.SetAdapterVisibility,
                          adapters_pb2.SetAdapterVisibilityRequest(name=name, visibility=visibility))

    def download_adapter(self, name: str, out_dir: str | Path) -> tuple[adapters_pb2.Adapter, Path]:
        """Save adapter ``name`` as ``out_dir/pytorch_lora_weights.safetensors`` (diffusers format)."""
        try:
            return rq.save_adapter_chunks(self.adapters.DownloadAdapter(
                adapters_pb2.DownloadAdapterRequest(name=name), timeout=self.timeout, metadata=self.metadata),
                Path(out_dir))
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None

    def upload_adapter(self, name: str, path: str | Path, overwrite: bool = False) -> adapters_pb2.Adapter:
        """Bring a LoRA in as ``name``: a .safetensors file, or a folder with a diffusers or PEFT LoRA."""
        try:
            return self.adapters.UploadAdapter(rq.adapter_upload_messages(name, Path(path), overwrite),
                                               timeout=self.timeout, metadata=self.metadata)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None


def _job_error(job: edit_pb2.Job):
    from longcat import errors

    cls = {"CANCELLED": errors.Cancelled, "INVALID_ARGUMENT": errors.InvalidArgument, "NOT_FOUND": errors.NotFound,
           "DEADLINE_EXCEEDED": errors.DeadlineExceeded, "UNAVAILABLE": Unavailable}.get(job.error_code,
                                                                                          errors.LongCatError)
    exc = cls(job.reason or edit_pb2.JobState.Name(job.state).lower())
    if cls is errors.LongCatError:
        exc.code = job.error_code or "INTERNAL"
    return exc
