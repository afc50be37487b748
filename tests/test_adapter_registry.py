"""The adapter registry alone (real Redis, the local-folder store, LoRA files written without torch): owners,
versions, visibility, references. The stack-level isolation tests are in test_tenant_isolation.py."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from longcat.adapters.registry import AdapterRegistry, Viewer
from longcat.adapters.store import AdapterStore
from longcat.api.keys import Keys
from longcat.api.names import AdapterRef, parse_adapter_ref
from longcat.errors import AdapterNotFound, InvalidArgument, PermissionDenied

ALICE, BOB, ADMIN = Viewer("alice"), Viewer("bob"), Viewer("root", admin=True)


def _lora(folder, rank: int = 4, fill: float = 0.0):
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    m = "transformer.transformer_blocks.0.attn.to_q"
    save_file({f"{m}.lora_A.weight": np.full((rank, 32), fill, np.float32),
               f"{m}.lora_B.weight": np.full((32, rank), fill, np.float32)},
              str(folder / "pytorch_lora_weights.safetensors"), metadata={"lora_alpha": str(2 * rank)})
    return folder


@pytest.fixture
def reg(redis_server, tmp_path):
    return AdapterRegistry(redis_server.client(), AdapterStore(tmp_path / "store"), Keys(uuid.uuid4().hex[:8]))


def test_refs_parse_and_print():
    assert parse_adapter_ref("style") == AdapterRef("style")
    assert parse_adapter_ref("alice/style@v3") == AdapterRef("style", "alice", 3)
    assert parse_adapter_ref("style@2") == AdapterRef("style", "", 2)
    assert str(AdapterRef("style", "alice", 3)) == "alice/style@v3"
    for bad in ("", "a/b/c", "x@v0", "x@latest", "../x", "a/../x", "/x", "x@", "a@b@c", "o!/x", "x" * 200):
        with pytest.raises(InvalidArgument) as exc:
            parse_adapter_ref(bad, "adapters[0].name")
        assert exc.value.field == "adapters[0].name", bad


def test_versions_are_kept_and_names_are_per_owner(reg, tmp_path):
    one, two = _lora(tmp_path / "one", 4), _lora(tmp_path / "two", 8)
    a1 = reg.publish("style", one, owner="alice")
    a2 = reg.publish("style", two, owner="alice")
    b1 = reg.publish("style", one, owner="bob")
    assert (a1.ref, a2.ref, b1.ref) == ("alice/style@v1", "alice/style@v2", "bob/style@v1")
    assert a2.versions == [1, 2] and a2.visibility == "private"
    # Version 1 is still there, unchanged; an unqualified name is the caller's own latest.
    assert reg.resolve("style@v1", ALICE).rank == 4 and reg.resolve("style", ALICE).ref == "alice/style@v2"
    assert reg.resolve("style", BOB).ref == "bob/style@v1"
    # Private: nobody else sees it, by any spelling.
    for ref in ("alice/style", "alice/style@v1"):
        with pytest.raises(AdapterNotFound):
            reg.resolve(ref, BOB, "adapters[0].name")
    assert [a.ref for a in reg.list(BOB)] == ["bob/style@v1"]
    assert sorted(a.ref for a in reg.list(ADMIN)) == ["alice/style@v2", "bob/style@v1"]
    # A redelivered training job gets its version back instead of a new one.
    j = reg.publish("trained", one, owner="alice", job_id="job-1")
    assert reg.publish("trained", two, owner="alice", job_id="job-1").ref == j.ref == "alice/trained@v1"


def test_visibility_and_who_may_manage(reg, tmp_path):
    reg.publish("style", _lora(tmp_path / "a"), owner="alice")
    with pytest.raises(AdapterNotFound):
        reg.set_visibility("alice/style", "shared", BOB)
    reg.set_visibility("style", "shared", ALICE)
    assert reg.resolve("style", BOB).ref == "alice/style@v1"  # bob has none of his own: alice's shared one
    with pytest.raises(PermissionDenied):
        reg.set_visibility("alice/style", "public", BOB)
    with pytest.raises(PermissionDenied):
        reg.delete("alice/style", viewer=BOB)
    with pytest.raises(InvalidArgument):
        reg.set_visibility("style", "everyone", ALICE)
    # Two owners sharing one name: an unqualified reference is ambiguous for a third tenant.
    reg.publish("style", _lora(tmp_path / "c"), owner="carol")
    reg.set_visibility("style", "public", Viewer("carol"))
    with pytest.raises(InvalidArgument) as exc:
        reg.resolve("style", BOB, "adapters[0].name")
    assert exc.value.field == "adapters[0].name" and "owner/style" in str(exc.value)
    assert reg.resolve("carol/style", BOB).visibility == "public"
    # Delete one version, then all; an admin may delete anyone's.
    reg.publish("style", _lora(tmp_path / "a2"), owner="alice")
    assert reg.delete("style@v1", viewer=ALICE).versions == [2]
    with pytest.raises(AdapterNotFound):
        reg.resolve("alice/style@v1", ALICE)
    reg.delete("alice/style", viewer=ADMIN)
    assert [a.ref for a in reg.list(ADMIN)] == ["carol/style@v1"]
    # A new adapter of a deleted name starts private again; numbering continues (v1 is never reused).
    again = reg.publish("style", _lora(tmp_path / "a3"), owner="alice")
    assert again.visibility == "private" and again.version == 3


def test_hand_placed_folders_still_answer_to_their_name(reg, tmp_path):
    _lora(reg.store.root / "by-hand")
    info = reg.resolve("by-hand", BOB)
    assert (info.ref, info.owner, info.version, info.visibility) == ("by-hand", "", 0, "public")
    assert "by-hand" in [a.name for a in reg.list(ALICE)]
    with pytest.raises(PermissionDenied):
        reg.delete("by-hand", viewer=ALICE)
    reg.delete("by-hand", viewer=ADMIN)
    assert not (reg.store.root / "by-hand").exists()
