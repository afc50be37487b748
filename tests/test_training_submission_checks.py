"""A training job no retry can fix fails at once in the trainer (one attempt, INVALID_ARGUMENT), and dataset
files are read only inside the data root, without following a symlink swapped in after the job was checked.
Real Redis and the real trainer runner; no worker process needed."""

from __future__ import annotations

import json
import os
import uuid

import pytest
import redis

from longcat.adapters.registry import AdapterRegistry
from longcat.adapters.store import AdapterStore
from longcat.api.datasets import read_inside
from longcat.api.keys import Keys
from longcat.api.training import Roots
from longcat.errors import InvalidArgument
from longcat.jobs.store import JobStore
from longcat.training.sample_data import write_pairs
from longcat.v1 import training_pb2
from services.trainer.runner import TrainerContext, run_training_job


@pytest.fixture
def ctx(redis_server, tmp_path):
    client = redis.Redis.from_url(redis_server.url)
    keys = Keys(f"trn-{uuid.uuid4().hex[:8]}")
    store = JobStore(client, keys)
    write_pairs(tmp_path / "data" / "ds", count=2, size=(64, 64), seed=0)
    roots = Roots.make(str(tmp_path / "data"), str(tmp_path / "out"))
    c = TrainerContext(store, AdapterRegistry(client, AdapterStore(str(tmp_path / "adapters")), keys), roots,
                       max_attempts=3, lease_ttl_s=5)
    yield c
    client.close()


def _job(ctx, model: str) -> str:
    cfg = {"max_train_steps": 2, "output_dir": "runs/x", "lora_rank": 4, "seed": 1,
           "pretrained_model_name_or_path": model}
    loader = [{"id": "edits", "type": "local", "instance_data_dir": "ds/edits", "caption_strategy": "textfile",
               "resolution": 64, "conditioning_data": ["refs"]},
              {"id": "refs", "type": "local", "instance_data_dir": "ds/refs", "resolution": 64}]
    req = training_pb2.SubmitTrainingRequest(config_json=json.dumps(cfg), dataloader_json=json.dumps(loader),
                                             adapter_name="x")
    job_id, _, _ = ctx.store.submit("training", "anonymous", req.SerializeToString())
    return job_id


@pytest.mark.parametrize("kind", ["missing", "broken-folder"])
def test_a_model_no_retry_can_load_fails_the_job_at_once(ctx, tmp_path, kind):
    if kind == "missing":
        model = str(tmp_path / "no-such-model")   # the gateway would refuse it; a job queued before, say
    else:
        model = tmp_path / "broken"               # looks like a diffusers folder, but holds no weights
        model.mkdir()
        (model / "model_index.json").write_text("{}")
        model = str(model)
    job_id = _job(ctx, model)
    assert run_training_job(ctx, job_id) == "FAILED"
    view = ctx.store.get(job_id)
    assert view.state == "FAILED" and view.attempts == 1 and view.error_code == "INVALID_ARGUMENT", view
    assert "pretrained_model_name_or_path" in view.reason
    assert ctx.store.active_count("anonymous", "training") == 0


def test_a_symlink_swapped_in_after_the_check_is_not_followed(tmp_path):
    root, outside = tmp_path / "data", tmp_path / "secret.png"
    root.mkdir()
    outside.write_bytes(b"secret")
    inside = root / "a.png"
    inside.write_bytes(b"fine")
    assert read_inside(inside, (root,)) == b"fine"
    inside.unlink()
    os.symlink(outside, inside)
    with pytest.raises(InvalidArgument):
        read_inside(inside, (root,))
    assert read_inside(inside) == b"secret"  # a local run (no roots) is not confined
