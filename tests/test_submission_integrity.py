"""Submission integrity and per-tenant fairness on a real gateway process over a real Redis (no workers: every
accepted job stays queued, so quotas fill up deterministically). Two API keys (alice, bob).

- a request_id reused with another payload -> ALREADY_EXISTS naming request_id (gRPC and HTTP 409); the same
  payload again -> the first job (idempotent retry, even with a seed the gateway resolved at random);
- a training job's model is checked at submission (missing folder, a folder that is not a diffusers model,
  a malformed hub id) -> INVALID_ARGUMENT naming the field;
- dataset files that are symlinks out of the data root are refused at submission;
- per-tenant quotas: alice over her limit -> RESOURCE_EXHAUSTED naming it, with retry-after-ms (HTTP 429 +
  Retry-After), while bob still submits; cancelling gives the slot back.
Every refused request is checked to create no job key.
"""

from __future__ import annotations

import json
import os
import uuid

import grpc
import httpx
import pytest

from longcat.launch import ServiceProcess
from longcat.training.sample_data import write_pairs
from longcat.v1 import edit_pb2, edit_pb2_grpc, training_pb2, training_pb2_grpc
from tests.gateway_stack import IMAGE, request, rpc_error

ALICE, BOB = [("authorization", "Bearer key-alice")], [("authorization", "Bearer key-bob")]


class Gateway:
    def __init__(self, root, redis_url: str):
        self.ns = f"sub-{uuid.uuid4().hex[:6]}"
        self.data, self.out = root / "data", root / "out"
        for owner in ("alice", "bob"):
            write_pairs(self.data / owner / "ds", count=2, size=(64, 64), seed=0)
        (root / "adapters").mkdir()
        self.svc = ServiceProcess("gateway", [
            "--redis-url", redis_url, "--namespace", self.ns, "--adapter-dir", str(root / "adapters"),
            "--data-root", str(self.data), "--output-root", str(self.out),
            "--max-active-per-tenant", "2", "--max-training-per-tenant", "1"], root / "logs",
            env={"LONGCAT_API_KEYS": "alice:key-alice,bob:key-bob"})
        self.svc.wait_serving(240)
        self.channel = grpc.insecure_channel(self.svc.address)
        self.edit = edit_pb2_grpc.EditServiceStub(self.channel)
        self.train = training_pb2_grpc.TrainingServiceStub(self.channel)
        self.http = httpx.Client(base_url=self.svc.http_url, timeout=120)
        import redis

        self.r = redis.Redis.from_url(redis_url)

    def job_keys(self) -> set[bytes]:
        return set(self.r.scan_iter(match=f"{self.ns}:job:*", count=1000))

    def cancel_all(self) -> None:
        for md in (ALICE, BOB):
            for job in self.train.ListJobs(training_pb2.ListJobsRequest(limit=1000), metadata=md, timeout=30).jobs:
                if job.state == edit_pb2.QUEUED:
                    stub = self.edit if job.kind == edit_pb2.EDIT else self.train
                    stub.CancelJob(edit_pb2.CancelJobRequest(job_id=job.id), metadata=md, timeout=30)

    def close(self) -> None:
        self.channel.close()
        self.http.close()
        self.r.close()
        self.svc.stop()


@pytest.fixture(scope="module")
def gw(tmp_path_factory, redis_server):
    g = Gateway(tmp_path_factory.mktemp("submission"), redis_server.url)
    yield g
    g.close()


@pytest.fixture(autouse=True)
def empty_quotas(gw):
    yield
    gw.cancel_all()


def _training(**config) -> training_pb2.SubmitTrainingRequest:
    rid = config.pop("_rid", "")
    cfg = {"max_train_steps": 2, "output_dir": "runs/x", "lora_rank": 4, "seed": 1, **config}
    loader = [{"id": "edits", "type": "local", "instance_data_dir": "ds/edits", "caption_strategy": "textfile",
               "resolution": 64, "conditioning_data": ["refs"]},
              {"id": "refs", "type": "local", "instance_data_dir": "ds/refs", "resolution": 64}]
    return training_pb2.SubmitTrainingRequest(config_json=json.dumps(cfg), dataloader_json=json.dumps(loader),
                                              adapter_name="x", request_id=rid)


def _refused(gw, call, *args, code: grpc.StatusCode, **kw) -> grpc.RpcError:
    before = gw.job_keys()
    err = rpc_error(call, *args, timeout=60, **kw)
    assert err.code() == code, err.details()
    assert gw.job_keys() == before, "a refused request created a job"
    return err


# --- request_id reuse -------------------------------------------------------------------------------------

def test_the_same_request_id_and_payload_returns_the_first_job_even_with_a_random_seed(gw):
    rid = uuid.uuid4().hex
    first = gw.edit.SubmitEdit(request(seed=None, request_id=rid), metadata=ALICE, timeout=60)
    again = gw.edit.SubmitEdit(request(seed=None, request_id=rid), metadata=ALICE, timeout=60)
    assert again.id == first.id


def test_a_request_id_reused_with_another_payload_is_already_exists(gw):
    rid = uuid.uuid4().hex
    first = gw.edit.SubmitEdit(request(request_id=rid), metadata=ALICE, timeout=60)
    err = _refused(gw, gw.edit.SubmitEdit, request(request_id=rid, prompt="another prompt"), metadata=ALICE,
                   code=grpc.StatusCode.ALREADY_EXISTS)
    assert "request_id" in err.details() and first.id in err.details()
    # Over HTTP: 409 naming the field.
    before = gw.job_keys()
    res = gw.http.post("/v1/jobs/edits", headers={"authorization": "Bearer key-alice"},
                       data={"prompt": "yet another", "size": "64x64", "num_inference_steps": "2", "request_id": rid},
                       files={"image": ("a.png", IMAGE, "image/png")})
    assert res.status_code == 409 and "request_id" in res.text, res.text
    assert gw.job_keys() == before
    # bob's request_id space is his own.
    assert gw.edit.SubmitEdit(request(request_id=rid), metadata=BOB, timeout=60).id != first.id


def test_a_training_request_id_reused_with_another_config_is_already_exists(gw):
    rid = uuid.uuid4().hex
    first = gw.train.SubmitTraining(_training(_rid=rid), metadata=ALICE, timeout=60)
    assert gw.train.SubmitTraining(_training(_rid=rid), metadata=ALICE, timeout=60).id == first.id
    err = _refused(gw, gw.train.SubmitTraining, _training(_rid=rid, lora_rank=8), metadata=ALICE,
                   code=grpc.StatusCode.ALREADY_EXISTS)
    assert "request_id" in err.details()


# --- the training model and symlinks, checked at submission --------------------------------------------

@pytest.mark.parametrize("model", ["/no/such/model", "__not_a_model__", "bad id!", "a/b/c/d", "tiny:abc"])
def test_a_training_model_no_trainer_could_load_is_refused_at_submission(gw, model):
    if model == "__not_a_model__":
        model = str(gw.data / "alice" / "ds")  # a folder, but no model_index.json
    err = _refused(gw, gw.train.SubmitTraining, _training(pretrained_model_name_or_path=model), metadata=ALICE,
                   code=grpc.StatusCode.INVALID_ARGUMENT)
    assert "pretrained_model_name_or_path" in err.details(), err.details()


def test_dataset_files_symlinked_out_of_the_data_root_are_refused(gw, tmp_path):
    outside = tmp_path / "secret.png"
    outside.write_bytes((gw.data / "alice" / "ds" / "edits" / "0000.png").read_bytes())
    ds = gw.data / "alice" / "linked"
    write_pairs(ds, count=2, size=(64, 64), seed=0)
    (ds / "edits" / "0001.png").unlink()
    os.symlink(outside, ds / "edits" / "0001.png")
    req = _training()
    loader = json.loads(req.dataloader_json)
    loader[0]["instance_data_dir"], loader[1]["instance_data_dir"] = "linked/edits", "linked/refs"
    req.dataloader_json = json.dumps(loader)
    err = _refused(gw, gw.train.SubmitTraining, req, metadata=ALICE, code=grpc.StatusCode.INVALID_ARGUMENT)
    assert "instance_data_dir" in err.details() and "symlink" in err.details(), err.details()
    # A symlink to bob's area (inside the data root, outside alice's) is refused as well.
    (ds / "edits" / "0001.png").unlink()
    os.symlink(gw.data / "bob" / "ds" / "edits" / "0001.png", ds / "edits" / "0001.png")
    err = _refused(gw, gw.train.SubmitTraining, req, metadata=ALICE, code=grpc.StatusCode.INVALID_ARGUMENT)
    assert "symlink" in err.details(), err.details()
    # A cache folder linked out of the root too.
    os.symlink(tmp_path, gw.data / "alice" / "cache-link")
    loader[0]["cache_dir_vae"] = "cache-link/edit"
    req.dataloader_json = json.dumps([{**loader[0], "instance_data_dir": "ds/edits"},
                                      {**loader[1], "instance_data_dir": "ds/refs"}])
    err = _refused(gw, gw.train.SubmitTraining, req, metadata=ALICE, code=grpc.StatusCode.INVALID_ARGUMENT)
    assert "cache_dir_vae" in err.details(), err.details()


def test_a_checkpoint_to_resume_from_outside_the_callers_outputs_is_refused(gw, tmp_path):
    for resume in (str(tmp_path), "../bob/runs/x/checkpoint-2", str(gw.out / "bob")):
        err = _refused(gw, gw.train.SubmitTraining, _training(resume_from_checkpoint=resume), metadata=ALICE,
                       code=grpc.StatusCode.INVALID_ARGUMENT)
        assert "resume_from_checkpoint" in err.details(), err.details()


# --- per-tenant quotas ------------------------------------------------------------------------------------

def test_one_tenant_at_its_edit_quota_does_not_stop_another(gw):
    jobs = [gw.edit.SubmitEdit(request(), metadata=ALICE, timeout=60) for _ in range(2)]
    err = _refused(gw, gw.edit.SubmitEdit, request(), metadata=ALICE, code=grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert "max_active_per_tenant" in err.details(), err.details()
    assert int(dict(err.trailing_metadata())["retry-after-ms"]) > 0
    before = gw.job_keys()
    res = gw.http.post("/v1/jobs/edits", headers={"authorization": "Bearer key-alice"},
                       data={"prompt": "p", "size": "64x64", "num_inference_steps": "2"},
                       files={"image": ("a.png", IMAGE, "image/png")})
    assert res.status_code == 429 and int(res.headers["retry-after"]) >= 1, res.text
    assert "max_active_per_tenant" in res.text and gw.job_keys() == before
    # bob is not held up by alice's full quota
    assert gw.edit.SubmitEdit(request(), metadata=BOB, timeout=60).state == edit_pb2.QUEUED
    # a cancelled job gives alice's slot back
    gw.edit.CancelJob(edit_pb2.CancelJobRequest(job_id=jobs[0].id), metadata=ALICE, timeout=30)
    assert gw.edit.SubmitEdit(request(), metadata=ALICE, timeout=60).state == edit_pb2.QUEUED


def test_training_jobs_have_their_own_quota(gw):
    gw.train.SubmitTraining(_training(), metadata=ALICE, timeout=60)
    err = _refused(gw, gw.train.SubmitTraining, _training(), metadata=ALICE,
                   code=grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert "max_training_per_tenant" in err.details()
    assert int(dict(err.trailing_metadata())["retry-after-ms"]) > 0
    assert gw.train.SubmitTraining(_training(), metadata=BOB, timeout=60).state == edit_pb2.QUEUED
    assert gw.edit.SubmitEdit(request(), metadata=ALICE, timeout=60).state == edit_pb2.QUEUED  # edits apart
