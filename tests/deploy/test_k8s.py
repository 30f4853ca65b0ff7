"""deploy/k8s: schema-valid manifests that fit together and match what the services do.

Each resource is validated against the Kubernetes OpenAPI schemas (kubernetes-validate, the
schemas kubeconform uses, shipped in the package: no network), strictly (unknown fields are
errors), for the oldest and the newest Kubernetes we support. Then the cross-references a schema
cannot see: selectors, Service ports, ConfigMap/Secret names, probes on /readyz and /healthz, a
preStop drain inside the termination grace period, the HPA and PDB on the gateway, and an Ingress
that routes only /api/.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway import chat, websocket
from shared.settings import VARIABLES
from tests.deploy.nginx import ROOT

K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
MODULES = {"gateway": "gateway", "notifications": "notifications_svc", "agent": "agent_svc"}
PORT_VARS = {
    "gateway": "GATEWAY_PORT",
    "notifications": "NOTIFICATIONS_PORT",
    "agent": "AGENT_PORT",
}
SETTINGS = {variable.name for variable in VARIABLES}


def _kustomization() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return document


def _resources() -> Iterator[dict[str, Any]]:
    for name in _kustomization()["resources"]:
        for document in yaml.safe_load_all((K8S / name).read_text()):
            if document:
                yield document


RESOURCES = list(_resources())


def _named(kind: str) -> dict[str, dict[str, Any]]:
    return {r["metadata"]["name"]: r for r in RESOURCES if r["kind"] == kind}


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _graceful_shutdown_seconds() -> int:
    """uvicorn's graceful-shutdown budget, as shared/service.py configures it."""
    source = (ROOT / "shared" / "service.py").read_text()
    match = re.search(r"timeout_graceful_shutdown=(\d+)", source)
    assert match, "shared/service.py no longer sets timeout_graceful_shutdown"
    return int(match[1])


def test_kustomization_lists_every_manifest() -> None:
    """Every YAML file in deploy/k8s is applied by the kustomization, and none is missing."""
    listed = set(_kustomization()["resources"])
    present = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(
    "resource", RESOURCES, ids=[f"{r['kind']}/{r['metadata']['name']}" for r in RESOURCES]
)
def test_resource_is_schema_valid(resource: dict[str, Any], version: str) -> None:
    """The resource validates strictly against the Kubernetes schema of that version."""
    kubernetes_validate.validate(resource, version, strict=True)


def test_a_deployment_and_service_per_service() -> None:
    """Each service has a Deployment running its module and a Service selecting its pods."""
    deployments, services = _named("Deployment"), _named("Service")
    assert set(deployments) == set(MODULES) == set(services)
    for name, module in MODULES.items():
        deployment = deployments[name]
        assert _container(deployment)["command"] == ["python", "-m", module]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert services[name]["spec"]["selector"].items() <= labels.items()
        port_names = {p["name"] for p in _container(deployment)["ports"]}
        assert {p["targetPort"] for p in services[name]["spec"]["ports"]} <= port_names


def test_container_ports_match_configuration() -> None:
    """Container ports equal the ports the ConfigMap tells the services to listen on, and the
    internal URLs name the Services on their ports."""
    config = _named("ConfigMap")["realtime-config"]["data"]
    services = _named("Service")
    for name, deployment in _named("Deployment").items():
        (port,) = _container(deployment)["ports"]
        assert port["containerPort"] == int(config[PORT_VARS[name]])
    for name, variable in (("notifications", "NOTIFICATIONS_URL"), ("agent", "AGENT_URL")):
        (service_port,) = services[name]["spec"]["ports"]
        assert config[variable] == f"http://{name}:{service_port['port']}"


# What each service's Secret holds: only what that service reads (the gateway has no database
# connection and never calls the model; only the agent holds the Claude key).
SECRETS_NEEDED = {
    "gateway": {"REDIS_URL", "SECRET_KEY", "INTERNAL_TOKEN"},
    "notifications": {
        "DATABASE_URL",
        "REDIS_URL",
        "SECRET_KEY",
        "INTERNAL_TOKEN",
        "VAPID_PRIVATE_KEY",
    },
    "agent": {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "INTERNAL_TOKEN", "ANTHROPIC_API_KEY"},
}


def _secret_template(service: str) -> set[str]:
    template = (K8S / f"{service}.secrets.env.example").read_text().splitlines()
    return {line.split("=", 1)[0] for line in template if line and not line.startswith("#")}


def test_configuration_names_are_settings() -> None:
    """The ConfigMap and the secrets templates hold only variables the settings table knows,
    and no setting is both in the map and a secret."""
    config = _named("ConfigMap")["realtime-config"]["data"]
    assert set(config) <= SETTINGS
    for service in MODULES:
        secrets = _secret_template(service)
        assert secrets <= SETTINGS
        assert not set(config) & secrets


def test_each_service_gets_only_its_own_secrets() -> None:
    """One generated Secret per service, from its own git-ignored file, holding exactly what the
    service needs; each Deployment reads the shared ConfigMap and its own Secret, nothing else."""
    generators = {g["name"]: g["envs"] for g in _kustomization()["secretGenerator"]}
    assert generators == {f"{s}-secrets": [f"{s}.secrets.env"] for s in MODULES}
    for service, needed in SECRETS_NEEDED.items():
        assert _secret_template(service) == needed, service
        sources = _container(_named("Deployment")[service])["envFrom"]
        assert sources == [
            {"configMapRef": {"name": "realtime-config"}},
            {"secretRef": {"name": f"{service}-secrets"}},
        ]


def test_each_service_has_its_own_redis_user_over_tls() -> None:
    """Every secrets template's REDIS_URL is `rediss://` and names the service's own ACL user
    (the users of docs/deploy.md, "Redis users")."""
    for service in MODULES:
        template = (K8S / f"{service}.secrets.env.example").read_text()
        (url,) = re.findall(r"^REDIS_URL=(.*)$", template, flags=re.MULTILINE)
        assert url.startswith(f"rediss://{service}:"), url


def test_no_pod_gets_a_service_account_token() -> None:
    """No service talks to the Kubernetes API, so no pod mounts a service-account token."""
    for name, deployment in _named("Deployment").items():
        assert deployment["spec"]["template"]["spec"]["automountServiceAccountToken"] is False, name


def test_probes_preStop_and_grace_period() -> None:
    """Readiness on /readyz, liveness on /healthz, and a preStop pause that, with uvicorn's
    graceful shutdown after it, fits in the termination grace period."""
    graceful = _graceful_shutdown_seconds()
    for name, deployment in _named("Deployment").items():
        container = _container(deployment)
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        command = container["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep"
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert int(command[1]) + graceful < grace, name


def test_pods_run_locked_down() -> None:
    """Non-root (the image's numeric uid), read-only root filesystem, no capabilities."""
    for deployment in _named("Deployment").values():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        container = _container(deployment)["securityContext"]
        assert container["readOnlyRootFilesystem"] is True
        assert container["allowPrivilegeEscalation"] is False
        assert container["capabilities"] == {"drop": ["ALL"]}


def test_gateway_autoscales_and_keeps_a_disruption_budget() -> None:
    """The HPA scales the gateway Deployment from at least two pods; the PDB lets only one go
    at a time, and selects exactly the gateway's pods."""
    gateway = _named("Deployment")["gateway"]
    (hpa,) = _named("HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "gateway",
    }
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["behavior"]["scaleDown"]["policies"] == [
        {"type": "Pods", "value": 1, "periodSeconds": 120}
    ]
    (pdb,) = _named("PodDisruptionBudget").values()
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"] == gateway["spec"]["selector"]
    assert gateway["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_ingress_routes_only_the_public_api_to_the_gateway() -> None:
    """Every Ingress path is under /api/ and goes to the gateway Service's port; the streaming
    paths get hour-long timeouts and no buffering."""
    ingresses = _named("Ingress")
    paths: dict[str, str] = {}
    for name, ingress in ingresses.items():
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert path["path"].startswith("/api/")
                assert path["backend"]["service"] == {"name": "gateway", "port": {"name": "http"}}
                paths[path["path"]] = name
    assert set(paths) == {"/api/", "/api/v1/ws/", "/api/v1/chat/"}
    streams = ingresses[paths["/api/v1/ws/"]]["metadata"]["annotations"]
    assert paths["/api/v1/chat/"] == paths["/api/v1/ws/"]
    assert int(streams["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert streams["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"


def test_token_bearing_urls_are_not_in_the_ingress_access_log() -> None:
    """The paths whose URLs may carry `?token=<JWT>` (WebSocket, the chat stream's EventSource
    resume) have no access log at the controller, whose default line holds the query string;
    the REST paths, authorised by header, keep theirs."""
    ingresses = _named("Ingress")
    access_log = "nginx.ingress.kubernetes.io/enable-access-log"
    assert ingresses["realtime-streams"]["metadata"]["annotations"][access_log] == "false"
    assert access_log not in ingresses["realtime-api"]["metadata"]["annotations"]
    stream_paths = {
        path["path"]
        for rule in ingresses["realtime-streams"]["spec"]["rules"]
        for path in rule["http"]["paths"]
    }
    # The gateway's routes that read a query token are under those paths.
    query_token_routes = [websocket.route.path] + [
        r.path for r in chat.routes if r.endpoint is chat.resume_stream
    ]
    for route in query_token_routes:
        assert any(route.startswith(prefix) for prefix in stream_paths), route


def test_ingress_limits_per_client_address() -> None:
    """Both Ingresses cap connections and request rates per client address like
    deploy/nginx.conf: handshakes at 10/s with a burst of 200, REST at 50/s with a burst of
    100, 100 connections at once."""
    ingresses = _named("Ingress")
    limits = {
        name: {
            key.rsplit("/", 1)[1]: int(value)
            for key, value in ingress["metadata"]["annotations"].items()
            if "/limit-" in key
        }
        for name, ingress in ingresses.items()
    }
    assert limits == {
        "realtime-streams": {
            "limit-connections": 100,
            "limit-rps": 10,
            "limit-burst-multiplier": 20,
        },
        "realtime-api": {"limit-connections": 100, "limit-rps": 50, "limit-burst-multiplier": 2},
    }


def test_network_policies_guard_every_service() -> None:
    """notifications and agent admit only this application's pods (and monitoring); the gateway
    also admits the ingress controller, whose X-Forwarded-For it believes."""
    policies = _named("NetworkPolicy")
    internal = policies["internal-services"]["spec"]
    (selector,) = internal["podSelector"]["matchExpressions"]
    assert set(selector["values"]) == {"notifications", "agent"}
    gateway = policies["gateway"]["spec"]
    assert gateway["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "gateway"}}
    sources = [peer for rule in gateway["ingress"] for peer in rule["from"]]
    namespaces = {
        p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for p in sources
        if "namespaceSelector" in p
    }
    assert namespaces == {"ingress-nginx", "monitoring"}
    env = {e["name"]: e["value"] for e in _container(_named("Deployment")["gateway"])["env"]}
    assert env["FORWARDED_ALLOW_IPS"] != "*" and "*" not in env["FORWARDED_ALLOW_IPS"]
    for policy in policies.values():
        if "Ingress" in policy["spec"]["policyTypes"]:
            (rule,) = policy["spec"]["ingress"]
            assert rule["ports"] == [{"port": "http"}]


def _egress(service: str) -> list[dict[str, Any]]:
    """The egress rules of the policy that selects `service`'s pods (exactly one does)."""
    (policy,) = [
        p["spec"]
        for p in _named("NetworkPolicy").values()
        if "Egress" in p["spec"]["policyTypes"]
        and p["spec"]["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": service}}
    ]
    rules: list[dict[str, Any]] = policy["egress"]
    return rules


def _ports(rules: list[dict[str, Any]]) -> set[object]:
    return {port["port"] for rule in rules for port in rule["ports"]}


def test_egress_is_limited_per_service() -> None:
    """Every service may resolve names and reach Redis; only the two database owners reach
    PostgreSQL; only the agent reaches HTTPS, and never private ranges or the metadata service;
    every rule names its ports (nothing is open wholesale)."""
    for service in MODULES:
        rules = _egress(service)
        assert all(rule.get("ports") for rule in rules), service
        dns = rules[0]
        assert {(p["protocol"], p["port"]) for p in dns["ports"]} == {("UDP", 53), ("TCP", 53)}
        assert 6380 in _ports(rules)  # Redis over TLS, as the secrets examples
        assert (5432 in _ports(rules)) == (service != "gateway")
        assert (443 in _ports(rules)) == (service == "agent")
    (internet,) = [rule for rule in _egress("agent") if 443 in _ports([rule])]
    (block,) = internet["to"]
    assert block["ipBlock"]["cidr"] == "0.0.0.0/0"
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= set(
        block["ipBlock"]["except"]
    )


def test_secrets_env_is_not_committed() -> None:
    """The real secrets files are git-ignored; only the templates are in the repository."""
    ignore = (ROOT / "deploy" / ".gitignore").read_text().splitlines()
    assert "k8s/*.secrets.env" in ignore


def test_kustomize_renders_valid_resources(tmp_path: Path) -> None:
    """`kubectl kustomize` (where kubectl exists) renders the tree, secrets template filled in,
    into resources that all validate and all live in the application's namespace."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; the manifests were validated one by one above")
    tree = tmp_path / "k8s"
    shutil.copytree(K8S, tree)
    for service in MODULES:
        shutil.copy(tree / f"{service}.secrets.env.example", tree / f"{service}.secrets.env")
    result = subprocess.run(
        [kubectl, "kustomize", str(tree)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    rendered = [r for r in yaml.safe_load_all(result.stdout) if r]
    assert {r["kind"] for r in rendered} == {r["kind"] for r in RESOURCES} | {"Secret"}
    for resource in rendered:
        kubernetes_validate.validate(resource, KUBERNETES_VERSIONS[-1], strict=True)
        if resource["kind"] != "Namespace":
            assert resource["metadata"]["namespace"] == "realtime"
