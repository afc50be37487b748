"""The gpu-multi overlay: one denoiser pod spanning 4 GPUs (torchrun ranks, CFG-parallel x Ulysses).

Rendered with the real ``kubectl kustomize`` and validated with the helpers of tests/test_deploy.py."""

from __future__ import annotations

import argparse

import kubernetes_validate
import pytest

from tests.test_deploy import K8S, render_dir, validate

TREE = K8S / "overlays" / "gpu-multi"


@pytest.fixture(scope="module")
def rendered():
    return render_dir(TREE)


@pytest.fixture(scope="module")
def gpu():
    return render_dir(K8S / "overlays" / "gpu")


def _deployment(objs, name):
    (dep,) = [o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == name]
    return dep


def _config(objs, prefix):
    (cm,) = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith(prefix)]
    return cm["data"]


def test_objects_validate(rendered):
    errors = []
    for o in rendered:
        try:
            validate(o)
        except Exception as err:  # noqa: BLE001 - collected and reported together
            errors.append(f"{o['kind']}/{o['metadata'].get('name')}: {getattr(err, 'message', err)}")
    assert not errors, "\n".join(errors)


def test_denoiser_ranks_match_its_gpus_and_layout(rendered, monkeypatch):
    from longcat.engine.parallel import ParallelLayout
    from services.denoiser.server import build_parser

    pod = _deployment(rendered, "denoiser")["spec"]["template"]["spec"]
    (c,) = [c for c in pod["containers"] if c["name"] == "denoiser"]
    assert c["command"] == ["torchrun"]
    parser = argparse.ArgumentParser()
    parser.add_argument("--nproc-per-node", type=int)
    parser.add_argument("-m", dest="module")
    known, _ = parser.parse_known_args(c["args"])
    assert known.module == "services.denoiser"
    gpus = int(c["resources"]["limits"]["nvidia.com/gpu"])
    assert known.nproc_per_node == gpus == int(c["resources"]["requests"]["nvidia.com/gpu"]) > 1
    env = _config(rendered, "longcat-denoiser")
    for key, value in env.items():  # the service reads its flags from these, as in the pod
        monkeypatch.setenv(key, value)
    args = build_parser().parse_args([])
    assert ParallelLayout.parse(args.parallel, gpus).world_size == gpus
    shm = {v["name"]: v for v in pod["volumes"]}["shm"]["emptyDir"]
    assert shm["medium"] == "Memory"


def test_only_the_denoiser_differs_from_the_gpu_overlay(rendered, gpu):
    def by_key(objs):  # generated ConfigMaps carry a content hash in their name: key them without it
        return {(o["kind"], o["metadata"]["name"].rsplit("-", 1)[0] if o["kind"] == "ConfigMap"
                 else o["metadata"]["name"]): o for o in objs}
    multi, single = by_key(rendered), by_key(gpu)
    assert set(multi) == set(single)
    changed = {k for k in multi if multi[k] != single[k]}
    assert changed == {("Deployment", "denoiser"), ("ConfigMap", "longcat-denoiser")}, changed


def test_a_broken_pod_is_refused():
    """Control: the validators used above are not vacuous on this overlay."""
    dep = _deployment(render_dir(TREE), "denoiser")
    dep["spec"]["template"]["spec"]["containers"][0]["commands"] = ["torchrun"]
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(dep)
