"""The replicated Redis for Kubernetes (components/redis-sentinel, overlays/cpu-tiny-ha), rendered and checked
like the other overlays (tests/test_deploy.py's helpers and checks, reused): schemas, references, the password;
plus what makes it survive a node: data pods and Sentinels one per node, PDBs that keep a quorum, and every
service dialling the Sentinels named in the same objects."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from longcat.jobs.redis_url import parse
from tests import test_deploy as d

TREE = "overlays/cpu-tiny-ha"
COMPONENT = d.K8S / "components" / "redis-sentinel"


def test_renders_and_passes_the_checks_of_every_overlay():
    d.test_renders(TREE)
    d.test_objects_match_the_kubernetes_and_keda_schemas(TREE)
    d.test_secrets_and_references_resolve(TREE)
    for service in d.SERVICES:
        d.test_ports_are_the_services_defaults(TREE, service)
    d.test_denoisers_scale_on_one_signal_that_counts_waiting_and_running_edits(TREE)


def _anti_affinity_selector(sts: dict) -> dict:
    (term,) = sts["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    return term["labelSelector"]["matchLabels"]


@pytest.mark.parametrize("name, least", [("redis", 2), ("redis-sentinel", 3)])
def test_one_pod_per_node_and_a_budget_that_keeps_a_quorum(name, least):
    sts = d.one(TREE, "StatefulSet", name)
    replicas = sts["spec"]["replicas"]
    assert replicas >= least
    own = sts["spec"]["template"]["metadata"]["labels"]
    selector = _anti_affinity_selector(sts)
    assert selector.items() <= own.items(), "the anti-affinity must select this StatefulSet's own pods"
    (pdb,) = [p for p in d.find(TREE, "PodDisruptionBudget")
              if p["spec"]["selector"]["matchLabels"].items() <= own.items()]
    assert pdb["spec"].get("maxUnavailable") == 1
    if name == "redis-sentinel":  # a drain leaves a majority: the quorum can still elect and fail over
        assert replicas - 1 > replicas // 2


def _config(key: str) -> str:
    return d.one(TREE, "ConfigMap", "longcat-redis-ha")["data"][key]


def test_every_service_dials_the_sentinels_of_this_overlay():
    sts = d.one(TREE, "StatefulSet", "redis-sentinel")
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    port = next(p["containerPort"] for p in c["ports"] if p["name"] == "sentinel")
    service = d.one(TREE, "Service", "redis-sentinel")
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    pods = {f"{sts['metadata']['name']}-{i}.{sts['spec']['serviceName']}" for i in range(sts["spec"]["replicas"])}
    secret = d.secret_data(TREE, "longcat-redis")
    target = parse(secret["url"])
    assert target.is_sentinel and {h for h, _ in target.sentinels} == pods
    assert {p for _, p in target.sentinels} == {port}
    assert target.master == _config("master-name") and target.password == secret["password"]
    for svc in ("gateway", "denoiser", "trainer"):
        assert d.env_of(TREE, svc)["LONGCAT_REDIS_URL"] == secret["url"]
    # KEDA still reads XLEN through the data pods' Service (a replica answers reads too).
    assert secret["address"] == f"redis.{d.NAMESPACE}.svc.cluster.local:6379"


def test_the_sentinels_and_data_pods_share_the_password_and_the_master_name():
    for name in ("redis", "redis-sentinel"):
        (c,) = d.one(TREE, "StatefulSet", name)["spec"]["template"]["spec"]["containers"]
        refs = {e["name"]: e.get("valueFrom", {}) for e in c["env"]}
        assert refs["REDIS_PASSWORD"]["secretKeyRef"] == {"name": "longcat-redis", "key": "password"}
        assert refs["MASTER_NAME"]["configMapKeyRef"] == {"name": "longcat-redis-ha", "key": "master-name"}
        assert c["args"][0] == "sh" and c["args"][1].startswith("/scripts/")
        assert c["args"][1].rsplit("/", 1)[1] in d.one(TREE, "ConfigMap", "longcat-redis-ha")["data"]
    redis = _config("redis-start.sh")
    assert '--requirepass "$REDIS_PASSWORD"' in redis and '--masterauth "$REDIS_PASSWORD"' in redis
    assert "--appendonly yes" in redis and "--maxmemory-policy noeviction" in redis
    assert "sentinel auth-pass ${MASTER_NAME} ${REDIS_PASSWORD}" in _config("sentinel-start.sh")


def test_the_gateway_acknowledges_durably_with_a_flag_it_has():
    from services.gateway.server import build_parser

    env = d.env_of(TREE, "gateway")
    assert env["LONGCAT_DURABLE_ACK_REPLICAS"] == "1"
    flags = {a.dest for a in build_parser()._actions}
    assert "durable_ack_replicas" in flags


@pytest.mark.parametrize("script", ["redis-start.sh", "sentinel-start.sh"])
def test_start_scripts_are_valid_posix_shell(script):
    sh = shutil.which("dash") or shutil.which("sh")
    out = subprocess.run([sh, "-n", str(COMPONENT / script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_sentinel_start_script_writes_a_config_that_redis_sentinel_runs(tmp_path):
    """The script run for real (paths and hostnames made local): the config it writes starts a Sentinel that
    monitors the named master with the configured quorum and timings."""
    import redis

    from longcat.launch import free_port

    port = free_port()
    text = (COMPONENT / "sentinel-start.sh").read_text()
    text = (text.replace("/data", str(tmp_path)).replace("port 26379", f"port {port}")
            .replace("sentinel announce-ip ${POD_NAME}.redis-sentinel", "")
            .replace('PRIMARY="redis-0.redis"', 'PRIMARY="127.0.0.1"')
            .replace("-p 26379", f"-p {port}"))
    (tmp_path / "start.sh").write_text(text)
    env = {"PATH": "/usr/bin:/bin", "POD_NAME": "redis-sentinel-0", "MASTER_NAME": _config("master-name"),
           "REDIS_PASSWORD": "pw", "DOWN_AFTER_MS": _config("down-after-ms"),
           "FAILOVER_TIMEOUT_MS": _config("failover-timeout-ms")}
    proc = subprocess.Popen(["sh", str(tmp_path / "start.sh")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    try:
        client = redis.Redis(port=port, socket_connect_timeout=0.5)
        d_master = None
        for _ in range(100):
            try:
                d_master = client.sentinel_master(_config("master-name"))
                break
            except redis.exceptions.ConnectionError:
                import time

                time.sleep(0.1)
        assert d_master is not None, "redis-sentinel did not start on the script's config"
        assert int(d_master["quorum"]) == 2
        assert int(d_master["down-after-milliseconds"]) == int(_config("down-after-ms"))
        assert int(d_master["failover-timeout"]) == int(_config("failover-timeout-ms"))
    finally:
        proc.terminate()
        proc.wait(10)
