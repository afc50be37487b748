"""The generated stubs match the .proto files (``make protos``), and the contract keeps its names."""

from __future__ import annotations

import subprocess
from pathlib import Path

from longcat import protos_build

ROOT = Path(protos_build.__file__).resolve().parent.parent


def test_generated_stubs_are_up_to_date(tmp_path):
    fresh = protos_build.generate(out_dir=tmp_path)
    assert fresh, "no .proto files found"
    for path in fresh:
        rel = path.relative_to(tmp_path)
        current = ROOT / rel
        assert current.exists(), f"{rel} is missing: run `make protos`"
        assert current.read_bytes() == path.read_bytes(), f"{rel} is stale: run `make protos`"


def test_generated_stubs_are_not_committed():
    tracked = subprocess.run(["git", "ls-files", "longcat/v1"], cwd=ROOT, capture_output=True, text=True).stdout
    assert tracked.strip() == ""


def test_public_contract_names():
    from longcat.v1 import adapters_pb2, common_pb2, edit_pb2, training_pb2

    services = {s.name: [m.name for m in s.methods] for f in (edit_pb2, training_pb2, adapters_pb2)
                for s in f.DESCRIPTOR.services_by_name.values()}
    assert services["EditService"] == ["Edit", "SubmitEdit", "WatchJob", "GetJob", "CancelJob"]
    assert {"SubmitTraining", "WatchJob", "GetJob", "CancelJob", "ListJobs"} <= set(services["TrainingService"])
    assert services["AdapterService"] == ["ListAdapters", "GetAdapter", "DeleteAdapter", "DownloadAdapter",
                                         "UploadAdapter", "SetAdapterVisibility"]
    fields = set(edit_pb2.EditRequest.DESCRIPTOR.fields_by_name)
    assert {"image", "prompt", "negative_prompt", "width", "height", "num_inference_steps", "guidance_scale",
            "seed", "adapters", "request_id"} <= fields
    assert {"image", "width", "height", "seed", "timings"} <= set(edit_pb2.EditResult.DESCRIPTOR.fields_by_name)
    assert set(common_pb2.AdapterRef.DESCRIPTOR.fields_by_name) == {"name", "scale"}
    assert edit_pb2.EditRequest.DESCRIPTOR.full_name == "longcat.v1.EditRequest"
