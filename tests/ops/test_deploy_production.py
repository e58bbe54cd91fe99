"""deploy/k8s/overlays/production and the components it uses, checked for what they mean rather than
their shape (tests/ops/test_deploy.py renders and validates them): the Gateway API routes against the
apps' own routes, the NetworkPolicies evaluated for who gets through, CloudNativePG wired to the
processes, zones, the notifier's autoscaling, and the Grafana dashboard's series. Each check returns
the problems it found; the ``*_catches_*`` tests feed it a broken copy.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from typing import Any

import pytest
from test_deploy import (
    DEPLOY,
    FAKE_SECRETS,
    PROCESSES,
    TARGETS,
    by_name,
    dynconfig_workloads,
    exported_series,
    get_routes,
    objects,
    process_app,
    service_process,
    settings_for,
    targets,
    unknown_series,
)

Docs = list[dict[str, Any]]

#: Namespaces the production policies speak of, by their kubernetes.io/metadata.name label.
GATEWAY_NS, MONITORING_NS, OPERATOR_NS, APP_NS = "gateway-system", "monitoring", "cnpg-system", "dynconfig"


@pytest.fixture(scope="module")
def rendered() -> dict[str, Docs]:
    return targets()


@pytest.fixture(scope="module")
def production(rendered: dict[str, Docs]) -> Docs:
    return rendered["production"]


# --- Gateway API: which backend a request reaches ------------------------------------------------------


def route_for(docs: Docs, path: str) -> tuple[str, dict[str, Any]] | None:
    """The rule of the HTTPRoutes that a GET of ``path`` matches, as the Gateway API ranks them (an
    Exact match before any PathPrefix, then the longest prefix): (route name, rule); None if none."""
    candidates: list[tuple[tuple[int, int], str, dict[str, Any]]] = []
    for route in objects(docs, "HTTPRoute"):
        for rule in route["spec"].get("rules", []):
            for match in rule.get("matches") or [{"path": {"type": "PathPrefix", "value": "/"}}]:
                kind = match.get("path", {}).get("type", "PathPrefix")
                value = match.get("path", {}).get("value", "/")
                if set(match) - {"path"}:
                    continue  # a match on headers or methods: not what a plain GET is
                if kind == "Exact" and path == value:
                    candidates.append(((1, len(value)), route["metadata"]["name"], rule))
                elif kind == "PathPrefix" and _prefix_matches(value, path):
                    candidates.append(((0, len(value)), route["metadata"]["name"], rule))
    if not candidates:
        return None
    _, name, rule = max(candidates, key=lambda c: c[0])
    return name, rule


def _prefix_matches(prefix: str, path: str) -> bool:
    """Gateway API PathPrefix: element-wise (``/abc`` matches ``/abc`` and ``/abc/x``, not ``/abcd``)."""
    prefix = prefix.rstrip("/")
    return prefix == "" or path == prefix or path.startswith(prefix + "/")


def backend_process(docs: Docs, rule: dict[str, Any]) -> str | None:
    """The process a rule forwards to (its one Service's pods), checking the port; None: no backend."""
    refs = rule.get("backendRefs") or []
    if not refs:
        return None
    assert len(refs) == 1, f"one backend per rule expected: {refs}"
    ref = refs[0]
    svc = by_name(docs, "Service", ref["name"])
    assert ref.get("port") in {p["port"] for p in svc["spec"]["ports"]}, f"{ref['name']}: no port {ref.get('port')}"
    return service_process(docs, ref["name"])


def _seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+)(ms|h|m|s)", duration))


def gateway_problems(docs: Docs) -> list[str]:
    """/watch reaches the notifier with no short request timeout; every other route of the API
    (and an unknown path) reaches the API; /metrics is forwarded nowhere."""
    settings = settings_for({**FAKE_SECRETS, "JWKS_URL": "https://idp.example/jwks.json"})
    problems = []
    watch = route_for(docs, "/watch")
    if watch is None or backend_process(docs, watch[1]) != "notifier":
        problems.append("/watch does not reach the notifier")
    else:
        timeout = watch[1].get("timeouts", {}).get("request")
        if timeout is None or (_seconds(timeout) != 0 and _seconds(timeout) < 3600):
            problems.append(f"/watch: request timeout {timeout} would cut live WebSockets")
    for path in sorted(get_routes(process_app("api_server", settings)) | {"/no/such/route"}):
        concrete = re.sub(r"\{[^}]+\}", "x", path)
        if concrete == "/metrics":
            continue
        found = route_for(docs, concrete)
        if found is None or backend_process(docs, found[1]) != "api_server":
            problems.append(f"{concrete} does not reach the API server")
    metrics = route_for(docs, "/metrics")
    if metrics is None or metrics[1].get("backendRefs") or metrics[1].get("filters"):
        problems.append("/metrics is forwarded through the gateway")
    return problems


@pytest.mark.parametrize("target", [t for t in TARGETS if "production" in t or "gateway" in t])
def test_gateway_routes_watch_to_the_notifier_the_api_to_the_api_and_metrics_nowhere(
    rendered: dict[str, Docs], target: str
) -> None:
    assert objects(rendered[target], "HTTPRoute"), "no HTTPRoute"
    assert gateway_problems(rendered[target]) == []


def test_gateway_check_catches_metrics_routed_and_a_watch_timeout(production: Docs) -> None:
    docs = copy.deepcopy(production)
    (route,) = objects(docs, "HTTPRoute")
    route["spec"]["rules"] = [r for r in route["spec"]["rules"] if r["matches"][0]["path"]["value"] != "/metrics"]
    route["spec"]["rules"][0]["timeouts"] = {"request": "60s"}
    problems = gateway_problems(docs)
    assert "/metrics is forwarded through the gateway" in problems
    assert "/watch: request timeout 60s would cut live WebSockets" in problems
    route["spec"]["rules"][0]["backendRefs"][0]["name"] = "dynconfig-api-server"
    route["spec"]["rules"][0]["backendRefs"][0]["port"] = 8080
    assert "/watch does not reach the notifier" in gateway_problems(docs)


def test_path_prefix_matches_whole_segments() -> None:
    assert _prefix_matches("/keys", "/keys/a") and _prefix_matches("/", "/metrics")
    assert not _prefix_matches("/keys", "/keysx")


# --- NetworkPolicies, evaluated -----------------------------------------------------------------------


@dataclass(frozen=True)
class Pod:
    """A pod (or, ``external``, an address outside the cluster) as NetworkPolicies see it."""

    namespace: str
    labels: dict[str, str] = field(default_factory=dict)
    external: bool = False

    def ns_labels(self) -> dict[str, str]:
        return {"kubernetes.io/metadata.name": self.namespace}


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if set(selector) - {"matchLabels"}:
        raise NotImplementedError(f"selector {selector}")
    return selector.get("matchLabels", {}).items() <= labels.items()


def _peer_matches(peer: dict[str, Any], other: Pod, policy_ns: str) -> bool:
    if "ipBlock" in peer:
        return other.external  # the policies here never name cluster addresses by IP
    if other.external:
        return False
    ns_ok = (
        _selects(peer["namespaceSelector"], other.ns_labels())
        if "namespaceSelector" in peer
        else (other.namespace == policy_ns)
    )
    pod_ok = _selects(peer["podSelector"], other.labels) if "podSelector" in peer else True
    return ns_ok and pod_ok


def _rule_allows(rule: dict[str, Any], peers_key: str, other: Pod, port: int, proto: str, ns: str) -> bool:
    peers = rule.get(peers_key)
    if peers is not None and not any(_peer_matches(p, other, ns) for p in peers):
        return False
    ports = rule.get("ports")
    return ports is None or any(p.get("port") == port and p.get("protocol", "TCP") == proto for p in ports)


def allowed(docs: Docs, src: Pod, dst: Pod, port: int, proto: str = "TCP") -> bool:
    """Would a connection from ``src`` to ``dst:port`` get through? Each side that some policy selects
    (egress for ``src``, ingress for ``dst``) must have a rule allowing it (Kubernetes semantics)."""
    policies = objects(docs, "NetworkPolicy")

    def side(pod: Pod, kind: str, other: Pod) -> bool:
        if pod.external:
            return True
        selecting = [
            p
            for p in policies
            if p["metadata"].get("namespace", APP_NS) == pod.namespace
            and _selects(p["spec"]["podSelector"], pod.labels)
            and kind in p["spec"].get("policyTypes", ["Ingress"])
        ]
        if not selecting:
            return True
        key = "from" if kind == "Ingress" else "to"
        return any(
            _rule_allows(rule, key, other, port, proto, p["metadata"].get("namespace", APP_NS))
            for p in selecting
            for rule in p["spec"].get(kind.lower(), [])
        )

    return side(src, "Egress", dst) and side(dst, "Ingress", src)


def _app(component: str) -> Pod:
    return Pod(APP_NS, {"app.kubernetes.io/name": "dynconfig", "app.kubernetes.io/component": component})


def cluster_pods(docs: Docs) -> dict[str, Pod]:
    (cluster,) = objects(docs, "Cluster")
    name = cluster["metadata"]["name"]
    return {
        "api": _app("api-server"),
        "notifier": _app("notifier"),
        "expiry": _app("expiry-worker"),
        "postgres": Pod(APP_NS, {"cnpg.io/cluster": name, "cnpg.io/instanceRole": "primary"}),
        "standby": Pod(APP_NS, {"cnpg.io/cluster": name, "cnpg.io/instanceRole": "replica"}),
        "redis": Pod(APP_NS, {"app.kubernetes.io/name": "redis"}),
        "gateway": Pod(GATEWAY_NS, {"app": "proxy"}),
        "prometheus": Pod(MONITORING_NS, {"app.kubernetes.io/name": "prometheus"}),
        "operator": Pod(OPERATOR_NS, {"app.kubernetes.io/name": "cloudnative-pg"}),
        "dns": Pod("kube-system", {"k8s-app": "kube-dns"}),
        "neighbour": Pod(APP_NS, {"app": "something-else"}),
        "stranger": Pod("default", {"app": "curl"}),
        "internet": Pod("", external=True),
    }


#: (source, destination, port, protocol, must it get through?)
EXPECTED_FLOWS = [
    ("gateway", "api", 8080, "TCP", True),
    ("gateway", "notifier", 8081, "TCP", True),
    ("gateway", "expiry", 8082, "TCP", False),
    ("gateway", "postgres", 5432, "TCP", False),
    ("prometheus", "api", 8080, "TCP", True),
    ("prometheus", "notifier", 8081, "TCP", True),
    ("prometheus", "expiry", 8082, "TCP", True),
    ("prometheus", "postgres", 9187, "TCP", True),
    ("prometheus", "postgres", 5432, "TCP", False),
    ("stranger", "api", 8080, "TCP", False),
    ("stranger", "notifier", 8081, "TCP", False),
    ("neighbour", "api", 8080, "TCP", False),
    ("neighbour", "postgres", 5432, "TCP", False),
    ("neighbour", "redis", 6379, "TCP", False),
    ("stranger", "postgres", 5432, "TCP", False),
    ("api", "postgres", 5432, "TCP", True),
    ("notifier", "postgres", 5432, "TCP", True),
    ("expiry", "postgres", 5432, "TCP", True),
    ("api", "redis", 6379, "TCP", True),
    ("notifier", "internet", 6379, "TCP", True),  # a managed Redis
    ("api", "internet", 443, "TCP", True),  # the JWKS
    ("api", "dns", 53, "UDP", True),
    ("api", "dns", 53, "TCP", True),
    ("api", "internet", 25, "TCP", False),
    ("api", "notifier", 8081, "TCP", False),
    ("api", "stranger", 8080, "TCP", False),
    ("standby", "postgres", 5432, "TCP", True),
    ("operator", "postgres", 8000, "TCP", True),
    ("redis", "redis", 26379, "TCP", True),
]


def network_problems(docs: Docs) -> list[str]:
    pods = cluster_pods(docs)
    problems = []
    for src, dst, port, proto, expected in EXPECTED_FLOWS:
        if allowed(docs, pods[src], pods[dst], port, proto) != expected:
            verdict = "is refused" if expected else "gets through"
            problems.append(f"{src} -> {dst}:{port}/{proto} {verdict}")
    # The gateway the routes attach to is the namespace the policies admit.
    for route in objects(docs, "HTTPRoute"):
        for parent in route["spec"]["parentRefs"]:
            if parent.get("namespace", APP_NS) != GATEWAY_NS:
                problems.append(f"HTTPRoute parent {parent['name']} is in {parent.get('namespace')}, not {GATEWAY_NS}")
    return problems


def test_network_policies_let_through_exactly_who_must(production: Docs) -> None:
    assert network_problems(production) == []


def test_network_check_catches_an_open_api_and_a_postgres_open_to_all(production: Docs) -> None:
    docs = copy.deepcopy(production)
    by_name(docs, "NetworkPolicy", "dynconfig-api-server-ingress")["spec"]["ingress"][0]["from"].append({})
    pg = by_name(docs, "NetworkPolicy", "dynconfig-postgres-ingress")
    pg["spec"]["ingress"][0]["from"].append({"namespaceSelector": {}})
    docs.remove(by_name(docs, "NetworkPolicy", "dynconfig-default-deny"))
    problems = network_problems(docs)
    assert "neighbour -> api:8080/TCP gets through" in problems
    assert "stranger -> postgres:5432/TCP gets through" in problems
    assert "api -> internet:25/TCP gets through" not in problems  # dynconfig-egress still holds
    docs.remove(by_name(docs, "NetworkPolicy", "dynconfig-egress"))
    assert "api -> internet:25/TCP gets through" in network_problems(docs)


# --- CloudNativePG ------------------------------------------------------------------------------------


def postgres_problems(docs: Docs) -> list[str]:
    """Three instances, a synchronous standby that writes wait for, WAL archived by the Barman Cloud
    plugin to an ObjectStore of the overlay, scheduled base backups of this cluster, and every process
    on the read-write service with the operator's credentials."""
    problems = []
    (cluster,) = objects(docs, "Cluster")
    name, spec = cluster["metadata"]["name"], cluster["spec"]
    if spec.get("instances", 1) < 3:
        problems.append(f"{name}: {spec.get('instances')} instances")
    sync = spec.get("postgresql", {}).get("synchronous", {})
    if sync.get("number", 0) < 1 or sync.get("dataDurability", "required") != "required":
        problems.append(f"{name}: no synchronous standby that commits wait for: {sync}")
    archivers = [p for p in spec.get("plugins", []) if p.get("isWALArchiver") and p.get("enabled", True)]
    stores = {o["metadata"]["name"]: o for o in objects(docs, "ObjectStore")}
    if len(archivers) != 1 or archivers[0]["name"] != "barman-cloud.cloudnative-pg.io":
        problems.append(f"{name}: WAL is not archived by the Barman Cloud plugin")
    elif archivers[0].get("parameters", {}).get("barmanObjectName") not in stores:
        problems.append(f"{name}: the WAL archive's ObjectStore is not in the overlay")
    elif "retentionPolicy" not in stores[archivers[0]["parameters"]["barmanObjectName"]]["spec"]:
        problems.append(f"{name}: backups are kept forever (no retentionPolicy)")
    backups = [
        b
        for b in objects(docs, "ScheduledBackup")
        if b["spec"]["cluster"]["name"] == name
        and b["spec"].get("method") == "plugin"
        and b["spec"].get("pluginConfiguration", {}).get("name") == "barman-cloud.cloudnative-pg.io"
    ]
    if not backups:
        problems.append(f"{name}: no scheduled base backup through the plugin")
    jobs = [(job, c) for job in objects(docs, "Job") for c in job["spec"]["template"]["spec"]["containers"]]
    for dep, container in [(dep, c) for dep, c, _ in dynconfig_workloads(docs)] + jobs:
        for var in container.get("env", []):
            if var["name"] != "POSTGRES_URL":
                continue
            ref = var.get("valueFrom", {}).get("secretKeyRef", {})
            # <cluster>-app's `uri` is the application user's URL on <cluster>-rw (the primary).
            if (ref.get("name"), ref.get("key")) != (f"{name}-app", "uri"):
                problems.append(f"{dep['metadata']['name']}: POSTGRES_URL from {ref}, not {name}-app/uri (-rw)")
    return problems


def test_postgres_is_a_cloudnativepg_cluster_with_a_synchronous_standby_and_backups(production: Docs) -> None:
    assert postgres_problems(production) == []
    assert {module for _, _, module in dynconfig_workloads(production)} == set(PROCESSES)
    assert [job["metadata"]["name"] for job in objects(production, "Job")] == ["dynconfig-migrate"]


def test_postgres_check_catches_async_replication_no_archive_and_a_direct_url(production: Docs) -> None:
    docs = copy.deepcopy(production)
    (cluster,) = objects(docs, "Cluster")
    del cluster["spec"]["postgresql"]["synchronous"]
    cluster["spec"]["plugins"][0]["parameters"]["barmanObjectName"] = "elsewhere"
    for obj in objects(docs, "ScheduledBackup"):
        docs.remove(obj)
    api = by_name(docs, "Deployment", "dynconfig-api-server")["spec"]["template"]["spec"]["containers"][0]
    next(v for v in api["env"] if v["name"] == "POSTGRES_URL")["valueFrom"]["secretKeyRef"] = {
        "name": "dynconfig-secrets",
        "key": "POSTGRES_URL",
    }
    (job,) = objects(docs, "Job")
    next(v for v in job["spec"]["template"]["spec"]["containers"][0]["env"] if v["name"] == "POSTGRES_URL")[
        "valueFrom"
    ]["secretKeyRef"] = {"name": "dynconfig-secrets", "key": "POSTGRES_URL"}
    problems = "\n".join(postgres_problems(docs))
    assert "dynconfig-migrate: POSTGRES_URL from" in problems
    assert "no synchronous standby" in problems
    assert "the WAL archive's ObjectStore is not in the overlay" in problems
    assert "no scheduled base backup" in problems
    assert "dynconfig-api-server: POSTGRES_URL from" in problems


def test_production_secrets_are_the_operators_or_documented(production: Docs) -> None:
    """Every Secret a production pod or CR reads is CloudNativePG's own, or one deploy/README.md tells
    the operator to create, with every key named."""
    readme = (DEPLOY / "README.md").read_text()
    section = readme[readme.index("## Production overlay") :]
    (cluster,) = objects(production, "Cluster")
    generated = f"{cluster['metadata']['name']}-app"
    refs: set[tuple[str, str]] = set()
    for dep in objects(production, "Deployment") + objects(production, "Job"):
        for container in dep["spec"]["template"]["spec"]["containers"]:
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.add((ref["name"], ref["key"]))
    for store in objects(production, "ObjectStore"):
        for cred in store["spec"]["configuration"].get("s3Credentials", {}).values():
            if isinstance(cred, dict):
                refs.add((cred["name"], cred["key"]))
    for secret, key in sorted(refs):
        if secret == generated:
            continue
        assert f"`{secret}`" in section and f"`{key}`" in section, f"{secret}/{key} is not in 'Production overlay'"


# --- spread, autoscaling ------------------------------------------------------------------------------


def spread_problems(docs: Docs) -> list[str]:
    """Every Deployment spreads its own pods across zones and across hosts."""
    problems = []
    for dep in objects(docs, "Deployment"):
        pod = dep["spec"]["template"]
        keys = {
            c["topologyKey"]
            for c in pod["spec"].get("topologySpreadConstraints", [])
            if c["labelSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        }
        for key in ("topology.kubernetes.io/zone", "kubernetes.io/hostname"):
            if key not in keys and dep["spec"].get("replicas", 2) != 1:
                problems.append(f"{dep['metadata']['name']}: not spread over {key}")
    return problems


@pytest.mark.parametrize("target", ["base", "production"])
def test_every_deployment_spreads_over_zones_and_hosts(rendered: dict[str, Docs], target: str) -> None:
    assert spread_problems(rendered[target]) == []


def test_spread_check_catches_a_missing_zone_constraint_and_a_foreign_selector(production: Docs) -> None:
    docs = copy.deepcopy(production)
    api = by_name(docs, "Deployment", "dynconfig-api-server")["spec"]["template"]["spec"]
    api["topologySpreadConstraints"] = api["topologySpreadConstraints"][1:]
    notifier = by_name(docs, "Deployment", "dynconfig-notifier")["spec"]["template"]["spec"]
    notifier["topologySpreadConstraints"][1]["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] = "x"
    assert spread_problems(docs) == [
        "dynconfig-api-server: not spread over topology.kubernetes.io/zone",
        "dynconfig-notifier: not spread over kubernetes.io/hostname",
    ]


def notifier_scaling_problems(docs: Docs, *, custom: bool) -> list[str]:
    """The notifier scales on CPU and on memory (and, with ``custom``, on its connections per pod: a
    series the notifier exports)."""
    hpa = by_name(docs, "HorizontalPodAutoscaler", "dynconfig-notifier")
    resources = {m["resource"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"}
    pods = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    problems = [f"no {name} metric" for name in ("cpu", "memory") if name not in resources]
    if custom and pods != ["dynconfig_ws_connections"]:
        problems.append(f"Pods metrics {pods}, expected dynconfig_ws_connections")
    problems += [f"{name} is not a series the notifier exports" for name in pods if name not in exported_series()]
    return problems


def test_the_notifier_scales_on_memory_and_connections_not_cpu_alone(rendered: dict[str, Docs]) -> None:
    assert notifier_scaling_problems(rendered["base"], custom=False) == []
    assert notifier_scaling_problems(rendered["production"], custom=True) == []
    readme = (DEPLOY / "README.md").read_text()
    assert "prometheus-adapter" in readme and "dynconfig_ws_connections" in readme


def test_scaling_check_catches_cpu_alone_and_a_wrong_series(production: Docs) -> None:
    docs = copy.deepcopy(production)
    hpa = by_name(docs, "HorizontalPodAutoscaler", "dynconfig-notifier")
    hpa["spec"]["metrics"] = [m for m in hpa["spec"]["metrics"] if m.get("resource", {}).get("name") != "memory"]
    hpa["spec"]["metrics"][-1]["pods"]["metric"]["name"] = "dynconfig_ws_connection"
    assert notifier_scaling_problems(docs, custom=True) == [
        "no memory metric",
        "Pods metrics ['dynconfig_ws_connection'], expected dynconfig_ws_connections",
        "dynconfig_ws_connection is not a series the notifier exports",
    ]


# --- the Grafana dashboard ----------------------------------------------------------------------------


def dashboard_problems(docs: Docs) -> list[str]:
    """A ConfigMap Grafana's sidecar loads, holding a dashboard whose every query names at least one
    series and only series the processes export."""
    maps = [c for c in objects(docs, "ConfigMap") if c["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    if len(maps) != 1:
        return [f"{len(maps)} ConfigMaps labelled grafana_dashboard"]
    problems = []
    for file, text in maps[0]["data"].items():
        dashboard = json.loads(text)
        queries = [
            (panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel.get("targets", [])
        ]
        if not queries:
            problems.append(f"{file}: no queries")
        for title, expr in queries:
            if not re.search(r"\bdynconfig_", expr):
                problems.append(f"{file}: {title!r} names no DynConfig series")
            problems += [f"{file}: {title!r}: {name} is not exported" for name in sorted(unknown_series(expr))]
    return problems


@pytest.mark.parametrize("target", ["production", "dev+monitoring", "base+monitoring"])
def test_the_grafana_dashboard_queries_only_exported_series(rendered: dict[str, Docs], target: str) -> None:
    assert dashboard_problems(rendered[target]) == []


def test_dashboard_check_catches_a_wrong_name_and_a_query_on_nothing_of_ours(production: Docs) -> None:
    docs = copy.deepcopy(production)
    cm = by_name(docs, "ConfigMap", "dynconfig-grafana-dashboard")
    (file,) = cm["data"]
    dashboard = json.loads(cm["data"][file])
    panels = [p for p in dashboard["panels"] if p.get("targets")]
    panels[0]["targets"][0]["expr"] = "sum(rate(dynconfig_http_requests_total[5m]))"
    panels[1]["targets"][0]["expr"] = "up"
    cm["data"][file] = json.dumps(dashboard)
    problems = "\n".join(dashboard_problems(docs))
    assert "dynconfig_http_requests_total is not exported" in problems
    assert f"{panels[1]['title']!r} names no DynConfig series" in problems
