"""Adapters in and out through the gateway (gRPC streams and the CLI), against real processes: Redis, the
encoder, a denoiser worker and two gateways (auth off / API keys on), all on the tiny model.

A LoRA saved by the project (diffusers) and the same weights in Meituan's PEFT layout are uploaded, used in
edits (the two give the same image as the file placed in the store by hand), downloaded and compared; files
that do not fit the served model are refused with the field named and nothing stored.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import grpc
import pytest
import torch

from longcat.client import LongCatClient
from longcat.errors import AlreadyExists, InvalidArgument
from longcat.v1 import adapters_pb2
from tests.gateway_stack import Stack, request, rpc_error
from tests.procs import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tiny_model_path, redis_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters-transfer")
    keys_file = root / "api-keys.txt"
    keys_file.write_text("alice:key-alice\nbob:key-bob\n")
    s = Stack(tiny_model_path, root, redis_server, ns=f"adx-{uuid.uuid4().hex[:6]}")
    try:
        s.add_worker()
        s.add_gateway("main", ["--model", tiny_model_path, "--max-adapter-mb", "1"], env={"LONGCAT_API_KEYS": ""})
        s.add_gateway("auth", ["--model", tiny_model_path, "--api-keys-file", str(keys_file)],
                      env={"LONGCAT_API_KEYS": ""})
        s.wait_serving()
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def loras(tiny_components, tmp_path_factory):
    """One random LoRA saved by the project both ways: diffusers (as the trainer publishes) and PEFT."""
    import copy

    from peft import LoraConfig

    from longcat.adapters import OFFICIAL_TARGET_MODULES, save_lora, save_peft_format

    root = tmp_path_factory.mktemp("loras")
    t = copy.deepcopy(tiny_components.transformer)
    t.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=OFFICIAL_TARGET_MODULES), adapter_name="x")
    gen = torch.Generator().manual_seed(7)
    for name, p in t.named_parameters():
        if "lora_" in name:
            p.data = torch.randn(p.shape, generator=gen) * 0.3
    return {"diffusers": save_lora(t, "x", root / "diffusers", rank=4, alpha=8),
            "peft": save_peft_format(t, "x", root / "peft", rank=4, alpha=8).parent}


def client(stack, gateway="main", key=None) -> LongCatClient:
    return LongCatClient(stack.gateways[gateway].address, api_key=key or "", timeout=120)


def cli(stack, *args, check=True):
    env = {**os.environ, "LONGCAT_GATEWAY": stack.gateways["main"].address, "LONGCAT_API_KEY": ""}
    proc = subprocess.run([sys.executable, "-m", "longcat.cli.main", *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"longcat {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def edit_image(stack, adapters=()) -> bytes:
    return stack.edit().Edit(request(64, 2, seed=11, adapters=list(adapters)), timeout=300).image


def test_upload_edit_download_diffusers_and_peft(stack, loras, tmp_path):
    from safetensors.torch import load_file

    from longcat.adapters import read_lora

    with client(stack) as lc:
        up = lc.upload_adapter("up-diff", loras["diffusers"])
        assert (up.name, up.format, up.rank, up.alpha) == ("up-diff", "diffusers", 4, 8.0)
        assert up.size_bytes == loras["diffusers"].stat().st_size
    # The PEFT folder through the CLI (weights + adapter_config.json).
    out = json.loads(cli(stack, "adapters", "upload", "up-peft", str(loras["peft"]), "--json").stdout)
    assert (out["name"], out["format"], out["rank"], out["alpha"]) == ("up-peft", "peft", 4, 8.0)

    # Edits with the uploaded adapters equal an edit with the same file placed in the store by hand.
    (stack.adapter_dir / "by-hand").mkdir()
    (stack.adapter_dir / "by-hand" / loras["diffusers"].name).write_bytes(loras["diffusers"].read_bytes())
    base, by_hand = edit_image(stack), edit_image(stack, [("by-hand", 1.0)])
    assert by_hand != base
    assert edit_image(stack, [("up-diff", 1.0)]) == by_hand
    assert edit_image(stack, [("up-peft", 1.0)]) == by_hand

    # Download: a diffusers upload comes back byte for byte; a PEFT one as diffusers keys, same tensors.
    with client(stack) as lc:
        info, path = lc.download_adapter("up-diff", tmp_path / "d")
        assert info.name == "up-diff" and path.read_bytes() == loras["diffusers"].read_bytes()
    got = json.loads(cli(stack, "adapters", "download", "up-peft", "--out", str(tmp_path / "p"), "--json").stdout)
    assert got["name"] == "up-peft" and got["path"].endswith("pytorch_lora_weights.safetensors")
    want, mine = load_file(str(loras["diffusers"])), load_file(got["path"])
    assert sorted(want) == sorted(mine) and all(torch.equal(want[k], mine[k]) for k in want)
    lora = read_lora(got["path"])
    assert (lora.format, lora.rank, lora.alpha) == ("diffusers", 4, 8.0)


def _save(path, tensors, metadata=None):
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    return path


def test_mismatched_loras_are_refused_with_the_field_named(stack, loras, tmp_path):
    r4 = torch.zeros
    cases = {
        "wrong-shape": (_save(tmp_path / "shape.safetensors", {
            "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": r4(4, 64),
            "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": r4(32, 4)}), "shape mismatch"),
        "unknown-key": (_save(tmp_path / "unknown.safetensors", {
            "transformer.transformer_blocks.9.attn.to_q.lora_A.weight": r4(4, 32),
            "transformer.transformer_blocks.9.attn.to_q.lora_B.weight": r4(32, 4)}), "transformer_blocks.9.attn.to_q"),
        "not-lora": (_save(tmp_path / "dora.safetensors", {
            "transformer.transformer_blocks.0.attn.to_q.lora_magnitude_vector": r4(32)}), "not a plain LoRA weight"),
        "half-pair": (_save(tmp_path / "half.safetensors", {
            "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": r4(4, 32)}), "only one of lora_A/lora_B"),
    }
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + os.urandom(64))
    cases["not-safetensors"] = (junk, "is not a safetensors file")
    big = tmp_path / "big.safetensors"  # over the gateway's --max-adapter-mb 1
    _save(big, {"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 32),
                "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(32, 4),
                "transformer.pad.lora_A.weight": torch.zeros(300_000, 1)})
    cases["too-big"] = (big, "1 MiB limit")
    with client(stack) as lc:
        for name, (path, words) in cases.items():
            with pytest.raises(InvalidArgument) as exc:
                lc.upload_adapter(name, path)
            assert exc.value.field == "file" and words in str(exc.value), (name, str(exc.value))
        # A PEFT config that is not JSON names its own field.
        bad_conf = tmp_path / "badconf"
        bad_conf.mkdir()
        (bad_conf / "adapter_model.safetensors").write_bytes((loras["peft"] / "adapter_model.safetensors").read_bytes())
        (bad_conf / "adapter_config.json").write_text("{nope")
        with pytest.raises(InvalidArgument) as exc:
            lc.upload_adapter("bad-conf", bad_conf)
        assert exc.value.field == "peft_config"
        listed = {a.name for a in lc.list_adapters()}
        assert not listed & {*cases, "bad-conf"}, "a refused upload was stored"
        assert not [p for p in stack.adapter_dir.iterdir() if p.name.startswith(".")], "staging left behind"
    # The first message must be the metadata; the gateway stays healthy after all of it.
    err = rpc_error(stack.adapters().UploadAdapter, iter([adapters_pb2.UploadAdapterRequest(data=b"x")]), timeout=30)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith("metadata:")
    assert stack.health() == "SERVING"
    # The CLI: one line naming the field, a non-zero exit code.
    bad = cli(stack, "adapters", "upload", "cli-bad", str(junk), check=False)
    assert bad.returncode == 2 and "file:" in bad.stderr and "is not a safetensors file" in bad.stderr


def test_never_replaced_silently_and_only_by_its_owner(stack, loras):
    with client(stack, "auth", "key-alice") as alice, client(stack, "auth", "key-bob") as bob:
        first = alice.upload_adapter("owned", loras["diffusers"])
        assert (first.owner, first.version, first.ref) == ("alice", 1, "alice/owned@v1")
        with pytest.raises(AlreadyExists) as exc:
            alice.upload_adapter("owned", loras["peft"])
        assert exc.value.field == "name" and "overwrite" in str(exc.value)
        # Bob's "owned" is bob/owned, another adapter: alice's is untouched and still hers alone.
        theirs = bob.upload_adapter("owned", loras["peft"], overwrite=True)
        assert (theirs.owner, theirs.ref) == ("bob", "bob/owned@v1")
        assert alice.get_adapter("owned").format == "diffusers"
        # overwrite publishes a new version; the first stays, pinned by owned@v1.
        again = alice.upload_adapter("owned", loras["peft"], overwrite=True)
        assert (again.format, again.owner, again.version, list(again.versions)) == ("peft", "alice", 2, [1, 2])
        assert alice.get_adapter("owned@v1").format == "diffusers"
    cli(stack, "adapters", "upload", "cli-dup", str(loras["diffusers"]), "--json")
    dup = cli(stack, "adapters", "upload", "cli-dup", str(loras["diffusers"]), "--json", check=False)
    assert dup.returncode != 0 and json.loads(dup.stdout)["code"] == "ALREADY_EXISTS"


def test_http_upload_and_download(stack, loras, tmp_path):
    """The same over HTTP: multipart ``file`` (+ PEFT ``config``), 201/409/413 with OpenAI's error shape."""
    import httpx
    from safetensors.torch import load_file

    url = stack.gateways["main"].http_url
    peft = loras["peft"]
    with httpx.Client(base_url=url, timeout=60) as http:
        files = {"file": ("adapter_model.safetensors", (peft / "adapter_model.safetensors").read_bytes()),
                 "config": ("adapter_config.json", (peft / "adapter_config.json").read_bytes())}
        r = http.post("/v1/adapters/http-peft", files=files)
        assert r.status_code == 201, r.text
        assert (r.json()["format"], r.json()["rank"], r.json()["alpha"]) == ("peft", 4, 8.0)
        dup = http.post("/v1/adapters/http-peft", files=files)
        assert dup.status_code == 409 and dup.json()["error"]["param"] == "name"
        replaced = http.post("/v1/adapters/http-peft", files=files, data={"overwrite": "true"})
        assert replaced.status_code == 201
        big = http.post("/v1/adapters/http-big", files={"file": ("x.safetensors", b"\0" * (1 << 20) + b"\0")})
        assert big.status_code == 413 and big.json()["error"]["param"] == "file"
        bad = http.post("/v1/adapters/http-bad", files={"file": ("x.safetensors", b"\x08" + b"\0" * 7 + b"[1,2,3] ")})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "file"
        got = http.get("/v1/adapters/http-peft/download")
        assert got.status_code == 200 and int(got.headers["content-length"]) == len(got.content)
        (tmp_path / "got.safetensors").write_bytes(got.content)
    want, mine = load_file(str(loras["diffusers"])), load_file(str(tmp_path / "got.safetensors"))
    assert sorted(want) == sorted(mine) and all(torch.equal(want[k], mine[k]) for k in want)
