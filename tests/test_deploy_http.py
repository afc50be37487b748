"""deploy/ for the gateway's HTTP door, held to the code like tests/test_deploy.py (whose rendering and
validation helpers this reuses): the HTTP port on the gateway's Pod and Service is the gateway's own default,
its probes are HTTP requests to routes the app really has, the NetworkPolicy lets the port in, and the
Ingress example is valid and points at it."""

from __future__ import annotations

import pytest

from longcat.api.edit import Limits
from services.gateway.core import GatewayConfig, GatewayCore
from services.gateway.server import build_parser
from tests.test_deploy import TREES, container, env_of, extras, find, one, validate

HTTP_PORT = build_parser().get_default("http_port")


def app_paths() -> set[str]:
    from services.gateway.auth import ApiKeys
    from services.gateway.http.app import create_app

    app = create_app(GatewayCore(None, GatewayConfig(Limits())), ApiKeys())
    return set(app.openapi()["paths"])


def test_the_gateway_default_http_port_is_8080():
    assert HTTP_PORT == 8080


@pytest.mark.parametrize("tree", TREES)
def test_the_http_port_is_on_the_pod_and_the_service(tree):
    c = container(tree, "gateway")
    assert {p["name"]: p["containerPort"] for p in c["ports"]}["http"] == HTTP_PORT
    env = env_of(tree, "gateway")
    if env.get("LONGCAT_HTTP_PORT") is not None:
        assert int(env["LONGCAT_HTTP_PORT"]) == HTTP_PORT
    by_name = {p["name"]: p for p in one(tree, "Service", "gateway")["spec"]["ports"]}
    assert by_name["http"]["port"] == HTTP_PORT and by_name["http"]["targetPort"] in ("http", HTTP_PORT)


@pytest.mark.parametrize("tree", TREES)
def test_http_probes_ask_routes_the_app_has(tree):
    c = container(tree, "gateway")
    paths = app_paths()
    probes = {name: c[name]["httpGet"] for name in ("readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"]["path"] == "/readyz" and probes["livenessProbe"]["path"] == "/healthz"
    for name, probe in probes.items():
        assert probe["path"] in paths, f"{tree} {name}: {probe['path']} is not a route"
        assert probe["port"] in ("http", HTTP_PORT)
    assert "grpc" in c["startupProbe"]  # started = the gRPC door serving (the HTTP door starts right after)


@pytest.mark.parametrize("tree", TREES)
def test_the_network_policy_lets_the_http_port_in(tree):
    ports = set()
    for p in find(tree, "NetworkPolicy"):
        if p["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name") == "gateway":
            for rule in p["spec"].get("ingress", []):
                ports |= {port["port"] for port in rule.get("ports", [])}
    assert HTTP_PORT in ports


def test_the_http_ingress_example_is_valid_and_targets_the_http_port():
    (ing,) = [o for o in extras() if o["kind"] == "Ingress" and o["metadata"]["name"] == "gateway-http"]
    validate(ing)
    notes = ing["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"  # SSE events as they happen
    assert int(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 300
    backends = [p["backend"]["service"] for r in ing["spec"]["rules"] for p in r["http"]["paths"]]
    service_ports = {p["name"] for p in one("base", "Service", "gateway")["spec"]["ports"]}
    assert backends and all(b["name"] == "gateway" and b["port"]["name"] in service_ports and
                            b["port"]["name"] == "http" for b in backends)
