"""Tenant isolation with API keys on, over gRPC and HTTP, on a real stack: Redis, encoder, one denoiser, the
gateway (alice, bob, and root named by --admin-owners) and a Celery trainer, all on the tiny model.

Tenant B must not see, use, replace or delete tenant A's jobs, adapters, datasets or outputs. Each check
has its positive control (A, or an admin, succeeds with the same call), and the adapter checks compare
images: A's edit must render the same bytes after B publishes an adapter of the same name.
"""

from __future__ import annotations

import json
import uuid

import grpc
import httpx
import pytest

from longcat.launch import ServiceProcess
from longcat.training.sample_data import write_pairs
from longcat.v1 import adapters_pb2, edit_pb2, training_pb2, training_pb2_grpc
from tests.gateway_stack import IMAGE, TERMINAL, Stack, busy_worker, request, rpc_error, submit, wait_job, watch

pytestmark = pytest.mark.slow

KEYS = {"alice": "key-alice", "bob": "key-bob", "root": "key-root"}
NOT_FOUND, DENIED = grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED


def md(who: str) -> list:
    return [("authorization", f"Bearer {KEYS[who]}")]


def hdr(who: str) -> dict:
    return {"Authorization": f"Bearer {KEYS[who]}"}


@pytest.fixture(scope="module")
def stack(tiny_model_path, redis_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("isolation")
    keys_file = root / "api-keys.txt"
    keys_file.write_text("".join(f"{o}:{k}\n" for o, k in KEYS.items()))
    s = Stack(tiny_model_path, root, redis_server, ns=f"iso-{uuid.uuid4().hex[:6]}")
    s.data, s.out = root / "data", root / "out"
    roots = ["--data-root", str(s.data), "--output-root", str(s.out)]
    trainer = None
    try:
        s.add_worker()
        s.add_gateway("main", ["--model", tiny_model_path, "--api-keys-file", str(keys_file), "--admin-owners",
                               "root", *roots], env={"LONGCAT_API_KEYS": ""})
        trainer = ServiceProcess("trainer", ["--model", tiny_model_path, *s.stack_args, *roots], s.logs)
        s.wait_serving()
        trainer.wait_serving(240)
        s.http = httpx.Client(base_url=s.gateways["main"].http_url, timeout=300)
        yield s
    finally:
        if trainer is not None:
            trainer.stop()
        s.close()


@pytest.fixture(scope="module")
def loras(tiny_components, tmp_path_factory):
    from tests.test_engine import _random_lora

    root = tmp_path_factory.mktemp("iso-loras")
    return {i: _random_lora(tiny_components.transformer, root / f"l{i}", seed=i) for i in (1, 2, 3)}


def upload(stack, who: str, name: str, path, overwrite: bool = False) -> adapters_pb2.Adapter:
    meta = adapters_pb2.UploadAdapterMetadata(name=name, overwrite=overwrite, filename=path.name)
    msgs = [adapters_pb2.UploadAdapterRequest(metadata=meta), adapters_pb2.UploadAdapterRequest(data=path.read_bytes())]
    return stack.adapters().UploadAdapter(iter(msgs), timeout=120, metadata=md(who))


def image(stack, who: str, adapters=()) -> bytes:
    return stack.edit().Edit(request(64, 2, seed=11, adapters=list(adapters)), timeout=300, metadata=md(who)).image


def names(stack, who: str) -> list[str]:
    return sorted(a.ref for a in stack.adapters().ListAdapters(adapters_pb2.ListAdaptersRequest(), timeout=30,
                                                               metadata=md(who)).adapters)


def stored_request(stack, job_id: str) -> edit_pb2.EditRequest:
    return edit_pb2.EditRequest.FromString(stack.r.get(stack.key("job", job_id, "request")))


# --- jobs ---------------------------------------------------------------------------------------------------

def test_jobs_of_another_tenant_are_not_found(stack):
    stub = stack.edit()
    job = submit(stub, request(64, 2, seed=3), md("alice"))
    wait_job(stub, job.id, TERMINAL, timeout=300, metadata=md("alice"))
    assert stub.GetJob(edit_pb2.GetJobRequest(job_id=job.id), timeout=30, metadata=md("alice")).state == \
        edit_pb2.SUCCEEDED
    for call, msg in ((stub.GetJob, edit_pb2.GetJobRequest(job_id=job.id)),
                      (stub.WatchJob, edit_pb2.WatchJobRequest(job_id=job.id)),
                      (stub.CancelJob, edit_pb2.CancelJobRequest(job_id=job.id))):
        assert rpc_error(call, msg, timeout=30, metadata=md("bob")).code() == NOT_FOUND, call
    train = training_pb2_grpc.TrainingServiceStub(stack.channel())
    assert rpc_error(train.GetJob, edit_pb2.GetJobRequest(job_id=job.id), timeout=30,
                     metadata=md("bob")).code() == NOT_FOUND

    def listed(who):
        return [j.id for j in train.ListJobs(training_pb2.ListJobsRequest(), timeout=30, metadata=md(who)).jobs]

    assert job.id not in listed("bob") and job.id in listed("alice")
    # The same over HTTP, result PNG URLs included.
    http = stack.http
    for path in (f"/v1/jobs/{job.id}", f"/v1/jobs/{job.id}/result", f"/v1/images/results/{job.id}.png",
                 f"/v1/jobs/{job.id}/events"):
        assert http.get(path, headers=hdr("alice")).status_code == 200, path
        assert http.get(path, headers=hdr("bob")).status_code == 404, path
    assert http.post(f"/v1/jobs/{job.id}/cancel", headers=hdr("bob")).status_code == 404
    assert job.id not in [j["id"] for j in http.get("/v1/jobs", headers=hdr("bob")).json()["data"]]


# --- adapters -----------------------------------------------------------------------------------------------

def test_adapters_are_private_by_default(stack, loras):
    mine = upload(stack, "alice", "priv", loras[1])
    assert (mine.owner, mine.ref, mine.visibility) == ("alice", "alice/priv@v1", "private")
    ad = stack.adapters()
    assert "alice/priv@v1" in names(stack, "alice") and "alice/priv@v1" not in names(stack, "bob")
    for ref in ("priv", "alice/priv", "alice/priv@v1", "priv@v1"):
        for call, msg in ((ad.GetAdapter, adapters_pb2.GetAdapterRequest(name=ref)),
                          (ad.DownloadAdapter, adapters_pb2.DownloadAdapterRequest(name=ref)),
                          (ad.DeleteAdapter, adapters_pb2.DeleteAdapterRequest(name=ref)),
                          (ad.SetAdapterVisibility, adapters_pb2.SetAdapterVisibilityRequest(name=ref,
                                                                                             visibility="public"))):
            assert rpc_error(call, msg, timeout=30, metadata=md("bob")).code() == NOT_FOUND, (ref, call)
    # Used in an edit: NOT_FOUND naming the field, and no job created (bob's job list is unchanged).
    before = stack.created_and_queued()
    for ref in ("priv", "alice/priv@v1"):
        err = rpc_error(stack.edit().SubmitEdit, request(64, 2, adapters=[(ref, 1.0)]), timeout=60,
                        metadata=md("bob"))
        assert err.code() == NOT_FOUND and err.details().startswith("adapters[0].name:"), err.details()
    assert stack.created_and_queued() == before
    # HTTP: the same refusals; alice's own calls succeed.
    http = stack.http
    assert http.get("/v1/adapters/priv", headers=hdr("alice")).json()["ref"] == "alice/priv@v1"
    assert "alice/priv@v1" not in [a["ref"] for a in http.get("/v1/adapters", headers=hdr("bob")).json()["data"]]
    for method, path in (("GET", "/v1/adapters/priv?owner=alice"), ("GET", "/v1/adapters/priv/download?owner=alice"),
                         ("DELETE", "/v1/adapters/priv?owner=alice")):
        assert http.request(method, path, headers=hdr("bob")).status_code == 404, path
    r = http.patch("/v1/adapters/priv?owner=alice", json={"visibility": "public"}, headers=hdr("bob"))
    assert r.status_code == 404
    r = http.post("/v1/jobs/edits", headers=hdr("bob"), data={"prompt": "x", "adapters": "alice/priv:1.0",
                                                              "size": "64x64"}, files={"image": ("i.png", IMAGE)})
    assert r.status_code == 404 and r.json()["error"]["param"] == "adapters[0].name", r.text
    assert stack.created_and_queued() == before
    # Still alice's, unchanged.
    assert ad.GetAdapter(adapters_pb2.GetAdapterRequest(name="priv"), timeout=30, metadata=md("alice")).version == 1


def test_publishing_a_taken_name_never_changes_anothers_image(stack, loras):
    upload(stack, "alice", "style", loras[1])
    base = image(stack, "alice")
    a1 = image(stack, "alice", [("style", 1.0)])
    assert a1 != base
    # Bob uploads "style" (gRPC, then HTTP with overwrite): his own adapter; alice's image is unchanged.
    theirs = upload(stack, "bob", "style", loras[2])
    assert theirs.ref == "bob/style@v1"
    r = stack.http.post("/v1/adapters/style", headers=hdr("bob"), data={"overwrite": "true"},
                        files={"file": (loras[3].name, loras[3].read_bytes())})
    assert r.status_code == 201 and r.json()["ref"] == "bob/style@v2", r.text
    assert image(stack, "alice", [("style", 1.0)]) == a1
    b = image(stack, "bob", [("style", 1.0)])
    assert b not in (a1, base)
    # Bob cannot delete alice's: his delete removes his own.
    assert stack.adapters().DeleteAdapter(adapters_pb2.DeleteAdapterRequest(name="style"), timeout=30,
                                          metadata=md("bob")).owner == "bob"
    info = stack.adapters().GetAdapter(adapters_pb2.GetAdapterRequest(name="style"), timeout=30, metadata=md("alice"))
    assert (info.owner, info.ref) == ("alice", "alice/style@v1")
    assert image(stack, "alice", [("style", 1.0)]) == a1


def test_versions_are_kept_and_a_queued_job_keeps_its_version(stack, loras):
    upload(stack, "alice", "ver", loras[1])
    v1 = image(stack, "alice", [("ver", 1.0)])
    stub = stack.edit()
    with busy_worker(stub, md("alice")):
        queued = submit(stub, request(64, 2, seed=11, adapters=[("ver", 1.0)]), md("alice"))
        assert [a.name for a in stored_request(stack, queued.id).adapters] == ["alice/ver@v1"]
        second = upload(stack, "alice", "ver", loras[2], overwrite=True)  # published while the job waits
        assert (second.version, list(second.versions)) == (2, [1, 2])
    done = wait_job(stub, queued.id, TERMINAL, timeout=300, metadata=md("alice"))
    assert done.state == edit_pb2.SUCCEEDED and done.result.image == v1
    v2 = image(stack, "alice", [("ver", 1.0)])
    assert v2 != v1 and image(stack, "alice", [("ver@v1", 1.0)]) == v1
    assert image(stack, "alice", [("alice/ver@v2", 1.0)]) == v2
    err = rpc_error(stub.Edit, request(64, 2, adapters=[("ver@v9", 1.0)]), timeout=60, metadata=md("alice"))
    assert err.code() == NOT_FOUND and err.details().startswith("adapters[0].name:")
    # Deleting one version leaves the other; an unpinned name then means the newest left.
    stack.adapters().DeleteAdapter(adapters_pb2.DeleteAdapterRequest(name="ver@v2"), timeout=30, metadata=md("alice"))
    assert image(stack, "alice", [("ver", 1.0)]) == v1


def test_shared_and_public_adapters_and_the_admin(stack, loras, tmp_path):
    ad, http = stack.adapters(), stack.http
    upload(stack, "alice", "gift", loras[3])
    a = image(stack, "alice", [("gift", 1.0)])
    shared = ad.SetAdapterVisibility(adapters_pb2.SetAdapterVisibilityRequest(name="gift", visibility="shared"),
                                     timeout=30, metadata=md("alice"))
    assert shared.visibility == "shared"
    # Bob lists it, uses it (unqualified: he has no "gift" of his own), but may not download or manage it.
    assert "alice/gift@v1" in names(stack, "bob")
    assert image(stack, "bob", [("gift", 1.0)]) == image(stack, "bob", [("alice/gift", 1.0)]) == a
    for call, msg in ((ad.DownloadAdapter, adapters_pb2.DownloadAdapterRequest(name="alice/gift")),
                      (ad.DeleteAdapter, adapters_pb2.DeleteAdapterRequest(name="alice/gift")),
                      (ad.SetAdapterVisibility, adapters_pb2.SetAdapterVisibilityRequest(name="alice/gift",
                                                                                         visibility="private"))):
        assert rpc_error(call, msg, timeout=30, metadata=md("bob")).code() == DENIED, call
    # Public over HTTP (PATCH): now bob downloads it.
    r = http.patch("/v1/adapters/gift", json={"visibility": "public"}, headers=hdr("alice"))
    assert r.status_code == 200 and r.json()["visibility"] == "public", r.text
    got = http.get("/v1/adapters/gift/download?owner=alice", headers=hdr("bob"))
    assert got.status_code == 200 and got.content == loras[3].read_bytes()
    assert http.delete("/v1/adapters/gift?owner=alice", headers=hdr("bob")).status_code == 403
    # Private again: gone for bob. The admin sees, changes and deletes anyone's.
    ad.SetAdapterVisibility(adapters_pb2.SetAdapterVisibilityRequest(name="gift", visibility="private"),
                            timeout=30, metadata=md("alice"))
    assert rpc_error(ad.GetAdapter, adapters_pb2.GetAdapterRequest(name="alice/gift"), timeout=30,
                     metadata=md("bob")).code() == NOT_FOUND
    assert "alice/gift@v1" in names(stack, "root")
    r = http.delete("/v1/adapters/gift?owner=alice", headers=hdr("root"))
    assert r.status_code == 200 and r.json()["deleted"] is True
    assert rpc_error(ad.GetAdapter, adapters_pb2.GetAdapterRequest(name="gift"), timeout=30,
                     metadata=md("alice")).code() == NOT_FOUND


# --- training: datasets, outputs, and a run that publishes a taken name --------------------------------------

def _config(output_dir: str, steps: int = 2) -> str:
    return json.dumps({"model_type": "lora", "model_family": "longcat_image", "model_flavour": "edit",
                       "base_model_precision": "no_change", "learning_rate": 5e-3, "seed": 1,
                       "max_train_steps": steps, "train_batch_size": 1, "output_dir": output_dir, "lora_rank": 4,
                       "checkpointing_steps": 1000, "num_validation_images": 0, "aspect_bucket_alignment": 64})


def _loader(folder: str) -> str:
    return json.dumps([
        {"id": "edit-images", "type": "local", "instance_data_dir": f"{folder}/edits", "caption_strategy": "textfile",
         "resolution": 64, "cache_dir_vae": f"{folder}-cache/edit", "conditioning_data": ["ref-images"]},
        {"id": "ref-images", "type": "local", "instance_data_dir": f"{folder}/refs", "caption_strategy": None,
         "resolution": 64, "cache_dir_vae": f"{folder}-cache/ref"}])


def test_datasets_and_outputs_of_another_tenant_are_refused(stack):
    write_pairs(stack.data / "alice" / "ds", count=2, size=(64, 64), seed=0)
    train = training_pb2_grpc.TrainingServiceStub(stack.channel())
    before = stack.created_and_queued()
    alice_ds = str(stack.data / "alice" / "ds")
    for loader, field in ((_loader(alice_ds), "instance_data_dir"), (_loader("../alice/ds"), "instance_data_dir")):
        err = rpc_error(train.SubmitTraining, training_pb2.SubmitTrainingRequest(
            config_json=_config("runs/x"), dataloader_json=loader, adapter_name="x"), timeout=60, metadata=md("bob"))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and field in err.details(), err.details()
    write_pairs(stack.data / "bob" / "ds", count=2, size=(64, 64), seed=0)
    for out in (str(stack.out / "alice" / "runs"), "../alice/runs"):
        err = rpc_error(train.SubmitTraining, training_pb2.SubmitTrainingRequest(
            config_json=_config(out), dataloader_json=_loader("ds"), adapter_name="x"), timeout=60, metadata=md("bob"))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "output_dir" in err.details(), err.details()
    assert stack.created_and_queued()[0] == before[0]


def test_a_training_run_under_a_taken_name_publishes_the_trainers_own_adapter(stack, loras):
    upload(stack, "alice", "taken", loras[1])
    a = image(stack, "alice", [("taken", 1.0)])
    write_pairs(stack.data / "bob" / "ds", count=2, size=(64, 64), seed=0)
    train = training_pb2_grpc.TrainingServiceStub(stack.channel())
    job = train.SubmitTraining(training_pb2.SubmitTrainingRequest(
        config_json=_config("runs/taken"), dataloader_json=_loader("ds"), adapter_name="taken",
        request_id=uuid.uuid4().hex), timeout=60, metadata=md("bob"))
    final = watch(train, job.id, timeout=600, metadata=md("bob"))[-1].job
    assert final.state == edit_pb2.SUCCEEDED, final.reason
    # Alice cannot see bob's training job or where it wrote.
    assert rpc_error(train.GetJob, edit_pb2.GetJobRequest(job_id=job.id), timeout=30,
                     metadata=md("alice")).code() == NOT_FOUND
    assert stack.http.get(f"/v1/jobs/{job.id}", headers=hdr("alice")).status_code == 404
    mine = stack.adapters().GetAdapter(adapters_pb2.GetAdapterRequest(name="taken"), timeout=30, metadata=md("bob"))
    assert (mine.owner, mine.job_id) == ("bob", job.id)
    assert (final.adapter_name, final.adapter_ref) == ("taken", "bob/taken@v1")  # the version it published
    # Alice's "taken" is still hers, renders the same image, and she can still delete it.
    assert image(stack, "alice", [("taken", 1.0)]) == a
    gone = stack.adapters().DeleteAdapter(adapters_pb2.DeleteAdapterRequest(name="taken"), timeout=30,
                                          metadata=md("alice"))
    assert (gone.owner, gone.ref) == ("alice", "alice/taken@v1")
    assert "bob/taken@v1" in names(stack, "bob")
    assert stack.health() == "SERVING"
