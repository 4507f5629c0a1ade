"""The Kubernetes manifests (deploy/kubernetes) and docker-compose's `scale` profile agree with the code.

No cluster and no Docker engine run here: the kustomizations are rendered with `kubectl kustomize`,
every object is validated against pinned Kubernetes API schemas (kubernetes-validate, strict), and
what the objects say is checked against what the services read and do: their settings classes,
their health ports, their shutdown, the image's user, the repository's policy.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import inspect
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic_settings import BaseSettings
from sqlalchemy.engine import make_url

from classifier_svc.settings import ClassifierSettings
from gateway.app import create_app
from gateway.settings import GatewaySettings
from ledger_client import LedgerReporter
from ledger_svc.settings import LedgerSettings
from router_svc.router import Router
from router_svc.settings import RouterSettings
from service_kit import auth
from service_kit.policy import Thresholds, load_policy
from service_kit.policy_file import rewrite
from service_kit.policy_source import PolicySource
from service_kit.providers import PROVIDER_KEYS
from simulator.settings import SimulatorSettings
from tests.waiting import eventually

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
POLICY = ROOT / "config" / "policy.yaml"
# The oldest Kubernetes these manifests are for (native gRPC probes: 1.27; the preStop sleep action:
# beta, on by default, since 1.30) and the newest kubernetes-validate (pinned in pyproject.toml) knows.
KUBERNETES_VERSIONS = ("1.32.0", "1.37.0")
OVERLAYS = ("base", "overlays/production", "overlays/dev")
SERVICES = ("router", "classifier", "ledger")
# The HTTP gateway: probed over HTTP, scaled like the router, stateless.
GATEWAY = "gateway"
# Container (and compose service) → the settings class its process builds from the environment.
SETTINGS: dict[str, type[BaseSettings]] = {
    "router": RouterSettings,
    "classifier": ClassifierSettings,
    "ledger": LedgerSettings,
    "simulator": SimulatorSettings,
    "gateway": GatewaySettings,
}
DOCKERFILES = {
    "router": "router_svc",
    "classifier": "classifier_svc",
    "ledger": "ledger_svc",
    "simulator": "simulator",
    "gateway": "gateway",
}

Obj = dict[str, Any]


# ---- rendering ------------------------------------------------------------------------------------


def _kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail(
            "kubectl is not on PATH: the Kubernetes manifests in deploy/kubernetes cannot be rendered "
            "(`kubectl kustomize`). Install kubectl (it bundles kustomize); see docs/kubernetes.md."
        )
    return path


@functools.cache
def render(overlay: str) -> tuple[Obj, ...]:
    # The base's ConfigMap is generated from config/policy.yaml, outside the kustomization's directory.
    result = subprocess.run(
        [_kubectl(), "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(DEPLOY / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"kubectl kustomize {overlay} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def objects(overlay: str, kind: str) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in render(overlay) if o["kind"] == kind}


def deployment(overlay: str, name: str) -> Obj:
    return objects(overlay, "Deployment")[name]


def container(overlay: str, name: str) -> Obj:
    found: Obj
    (found,) = deployment(overlay, name)["spec"]["template"]["spec"]["containers"]
    assert found["name"] == name
    return found


def _secret_value(overlay: str, ref: Obj) -> str | None:
    """A secretKeyRef's value when the overlay generates the Secret (else None: created by the operator)."""
    secret = objects(overlay, "Secret").get(ref["name"])
    if secret is None or ref["key"] not in secret.get("data", {}):
        return None
    return base64.b64decode(secret["data"][ref["key"]]).decode()


def environment(overlay: str, name: str) -> dict[str, str | None]:
    """A container's variables: literal values, values of Secrets the overlay generates, else None."""
    env: dict[str, str | None] = {}
    for item in container(overlay, name).get("env", []):
        assert item["name"] not in env, f"{name} sets {item['name']} twice"
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:
            env[item["name"]] = _secret_value(overlay, item["valueFrom"]["secretKeyRef"])
    return env


def accepted_variables(service: str) -> set[str]:
    """What the service reads: its settings fields under its prefix, the provider keys, LiteLLM's
    price-map switch, and the key variables the policy's models name (`api_key_env`)."""
    settings_class = SETTINGS[service]
    prefix = settings_class.model_config["env_prefix"]
    names = {prefix + field.upper() for field in settings_class.model_fields}
    policy = load_policy(POLICY)
    named = {m.api_key_env for models in policy.tiers.values() for m in models if m.api_key_env}
    return names | set(PROVIDER_KEYS.values()) | {"LITELLM_LOCAL_MODEL_COST_MAP"} | named


def settings_from(
    monkeypatch: pytest.MonkeyPatch, service: str, env: dict[str, str | None] | dict[str, str]
) -> Any:
    """The service's settings as its process would build them from `env` (unknown values left out)."""
    settings_class = SETTINGS[service]
    prefix = settings_class.model_config["env_prefix"]
    for key in list(os.environ):
        if key.startswith(prefix):
            monkeypatch.delenv(key)
    for key, value in env.items():
        if value is not None and key.startswith(prefix):
            monkeypatch.setenv(key, value)
    return settings_class()


_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T|m)?$")
_FACTORS = {
    None: 1,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 1 << 10,
    "Mi": 1 << 20,
    "Gi": 1 << 30,
    "Ti": 1 << 40,
}


def quantity(value: str | int) -> float:
    """A Kubernetes resource quantity ("250m", "1", "512Mi") as a number (cores, bytes)."""
    match = _QUANTITY.match(str(value))
    assert match, f"not a quantity: {value}"
    return float(match.group(1)) * _FACTORS[match.group(2)]


def _mounts(overlay: str, name: str) -> dict[str, tuple[Obj, Obj]]:
    """mountPath → (the volumeMount, its volume)."""
    volumes = {v["name"]: v for v in deployment(overlay, name)["spec"]["template"]["spec"].get("volumes", [])}
    return {m["mountPath"]: (m, volumes[m["name"]]) for m in container(overlay, name).get("volumeMounts", [])}


def _volume_holding(overlay: str, name: str, path: str) -> Obj:
    """The writable volume a file at `path` lives on."""
    for mount_path, (mount, volume) in _mounts(overlay, name).items():
        if Path(path).parent == Path(mount_path) or Path(mount_path) in Path(path).parents:
            assert not mount.get("readOnly"), f"{name}: {path} is on a read-only mount"
            return volume
    raise AssertionError(f"{name}: {path} is on no volume (the root file system is read-only)")


def _image_uid(service: str) -> int:
    dockerfile = (ROOT / DOCKERFILES[service] / "Dockerfile").read_text()
    match = re.search(r"useradd --uid (\d+)", dockerfile)
    assert match, f"{service}'s Dockerfile creates no user with a fixed uid"
    return int(match.group(1))


# ---- Kubernetes: schema -----------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid_for_the_pinned_kubernetes(overlay: str, version: str) -> None:
    errors = []
    for obj in render(overlay):
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {error.path}: {error.message}")
    assert not errors, "\n".join(errors)


def test_strict_validation_refuses_a_misspelt_field() -> None:
    # The schema check above can fail: a misspelt probe is an error, not an ignored field.
    router = yaml.safe_load(yaml.safe_dump(deployment("base", "router")))
    spec = router["spec"]["template"]["spec"]["containers"][0]
    spec["readinesProbe"] = spec.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(router, KUBERNETES_VERSIONS[0], strict=True)


# ---- Kubernetes: each service's objects -------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_service_has_its_deployment_service_autoscaler_and_disruption_budget(overlay: str) -> None:
    deployments = objects(overlay, "Deployment")
    services = objects(overlay, "Service")
    autoscalers = objects(overlay, "HorizontalPodAutoscaler")
    budgets = objects(overlay, "PodDisruptionBudget")
    # The simulator only where every call is simulated on purpose.
    assert set(deployments) == {*SERVICES, GATEWAY, *(["simulator"] if overlay == "overlays/dev" else [])}
    # The router's pods also by their own addresses, for clients balancing calls (round_robin).
    headless = services["router-headless"]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == services["router"]["spec"]["selector"]
    assert headless["spec"]["ports"] == services["router"]["spec"]["ports"]
    for name, found in deployments.items():
        pod_labels = found["spec"]["template"]["metadata"]["labels"]
        selector = found["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pod_labels.items()
        # The Service reaches exactly these pods, on the container's named port.
        service = services[name]
        assert service["spec"]["selector"].items() <= pod_labels.items()
        ports = {p["name"]: p["containerPort"] for p in container(overlay, name)["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports
        if name == "simulator":
            continue
        budget = budgets[name]
        assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        assert budget["spec"]["maxUnavailable"] == 1
    # The router, the classifier and the gateway scale on CPU; the ledger (bounded by its database)
    # does not.
    assert set(autoscalers) == {"router", "classifier", GATEWAY}
    for name, autoscaler in autoscalers.items():
        target = autoscaler["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", name)
        assert 1 <= autoscaler["spec"]["minReplicas"] <= autoscaler["spec"]["maxReplicas"]
        (metric,) = autoscaler["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"
        # Utilization is relative to the request: there must be one.
        assert quantity(container(overlay, name)["resources"]["requests"]["cpu"]) > 0
        # A replica count in the Deployment would be reset by every `kubectl apply`, fighting the
        # autoscaler.
        assert "replicas" not in deployments[name]["spec"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_variable_set_is_one_the_service_reads_and_parses(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in objects(overlay, "Deployment"):
        env = environment(overlay, name)
        unknown = set(env) - accepted_variables(name)
        assert not unknown, f"{overlay}: {name} sets variables its code does not read: {unknown}"
        # The values parse (a misspelt choice such as ROUTER_SIMULATOR=nevr fails here).
        settings_from(monkeypatch, name, env)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_are_grpc_health_checks_on_the_port_the_service_listens_on(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in SERVICES:
        settings = settings_from(monkeypatch, name, environment(overlay, name))
        # The kubelet probes the pod's IP: a service listening on 127.0.0.1 (the default) fails them.
        assert settings.host == "0.0.0.0"
        spec = container(overlay, name)
        ports = {p["name"]: p["containerPort"] for p in spec["ports"]}
        assert ports == {"grpc": settings.port, "metrics": settings.metrics_port}
        annotations = deployment(overlay, name)["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(settings.metrics_port) != "0"
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = spec[kind]
            handlers = set(probe) & {"grpc", "httpGet", "tcpSocket", "exec"}
            assert handlers == {"grpc"}, f"{name} {kind}: {handlers}"
            assert probe["grpc"]["port"] == settings.port
            # The overall status ("" service), which the server flips to NOT_SERVING when it stops
            # (service_kit/server.py) and, for the router, while its spool cannot take records.
            assert probe["grpc"].get("service", "") == ""
    # The router is NOT_SERVING through its warm-up calls: the start-up probe waits longer than they may.
    router = container(overlay, "router")["startupProbe"]
    warm_up = settings_from(monkeypatch, "router", environment(overlay, "router")).warm_up_timeout_seconds
    assert router["periodSeconds"] * router["failureThreshold"] > warm_up


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_as_the_images_non_root_user_without_privileges(overlay: str) -> None:
    for name, found in objects(overlay, "Deployment").items():
        pod = found["spec"]["template"]["spec"]
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True
        # Numeric: the kubelet cannot verify a user name (the Dockerfile's USER llmroute) is not root.
        assert context["runAsUser"] == _image_uid(name) != 0
        assert context["seccompProfile"]["type"] == "RuntimeDefault"
        assert not any(pod.get(key) for key in ("hostNetwork", "hostPID", "hostIPC"))
        # No API token in pods that never call the API; no service-link variables (ROUTER_PORT=tcp://...).
        assert pod["automountServiceAccountToken"] is False
        assert pod["enableServiceLinks"] is False
        for spec in pod["containers"]:
            security = spec["securityContext"]
            assert security["allowPrivilegeEscalation"] is False
            assert security["readOnlyRootFilesystem"] is True
            assert security.get("privileged") is not True
            assert security["capabilities"] == {"drop": ["ALL"]}
            assert security.get("runAsUser", context["runAsUser"]) != 0
            # Read-only root: Python's tempfile (LiteLLM probes it at import) needs a writable /tmp.
            assert "emptyDir" in _volume_holding(overlay, name, "/tmp/x")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_what_the_services_write_is_on_a_volume(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    router = settings_from(monkeypatch, "router", environment(overlay, "router"))
    spool = _volume_holding(overlay, "router", str(router.spool_path))
    # The kubelet evicts a pod whose emptyDir outgrows its sizeLimit, and deletes the volume with the
    # spooled records: the router's own cap (NOT_SERVING, no new paid work) must come first, with room
    # for the WAL and the once-a-second check.
    assert quantity(spool["emptyDir"]["sizeLimit"]) >= 2 * router.spool_max_bytes
    ledger = settings_from(monkeypatch, "ledger", environment(overlay, "ledger"))
    url = ledger.database_url
    if overlay == "overlays/dev":
        assert url.startswith("sqlite+aiosqlite:////")  # an absolute path, on the pod's volume
        _volume_holding(overlay, "ledger", make_url(url).database or "")
        # SQLite has one writer: one ledger, and never two at once during a rollout.
        assert deployment(overlay, "ledger")["spec"]["replicas"] == 1
        assert deployment(overlay, "ledger")["spec"]["strategy"] == {"type": "Recreate"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_policy_config_map_is_the_repositorys_policy_mounted_as_a_directory(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_maps = objects(overlay, "ConfigMap")
    for name in ("router", "classifier", GATEWAY):
        settings = settings_from(monkeypatch, name, environment(overlay, name))
        path = Path(settings.policy_path)
        mount, volume = _mounts(overlay, name)[str(path.parent)]
        # A subPath mount never receives ConfigMap updates.
        assert "subPath" not in mount and mount["readOnly"] is True
        config_map = config_maps[volume["configMap"]["name"]]
        assert "items" not in volume["configMap"]
        assert config_map["data"][path.name] == POLICY.read_text()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_outlasts_the_services_drain(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The router's shutdown (service_kit/server.py, router_svc/server.py): NOT_SERVING, in-flight calls
    # get grace_seconds, then its closers run with their default time limits: Router.close lets
    # background explorations finish, LedgerReporter.close drains the spool.
    explorations = inspect.signature(Router.close).parameters["timeout"].default
    spool_drain = inspect.signature(LedgerReporter.close).parameters["drain_timeout"].default
    for name in SERVICES:
        pod = deployment(overlay, name)["spec"]["template"]["spec"]
        settings = settings_from(monkeypatch, name, environment(overlay, name))
        pre_stop = container(overlay, name)["lifecycle"]["preStop"]["sleep"]["seconds"]
        # The kubelet's countdown starts with the preStop hook, before SIGTERM.
        needed = pre_stop + settings.grace_seconds + (explorations + spool_drain if name == "router" else 0)
        assert pod["terminationGracePeriodSeconds"] > needed, name
    # The gateway (gateway/server.py): uvicorn lets requests in flight finish for grace_seconds.
    pod = deployment(overlay, GATEWAY)["spec"]["template"]["spec"]
    settings = settings_from(monkeypatch, GATEWAY, environment(overlay, GATEWAY))
    pre_stop = container(overlay, GATEWAY)["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pre_stop + settings.grace_seconds


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_requests_and_limits(overlay: str) -> None:
    for name, found in objects(overlay, "Deployment").items():
        for spec in found["spec"]["template"]["spec"]["containers"]:
            requests, limits = spec["resources"]["requests"], spec["resources"]["limits"]
            for resource in ("cpu", "memory"):
                assert 0 < quantity(requests[resource]) <= quantity(limits[resource]), (name, resource)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_is_probed_over_http_and_reaches_the_services_by_their_services(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_from(monkeypatch, GATEWAY, environment(overlay, GATEWAY))
    assert settings.host == "0.0.0.0"  # the kubelet probes the pod's IP
    spec = container(overlay, GATEWAY)
    ports = {p["name"]: p["containerPort"] for p in spec["ports"]}
    assert ports == {"http": settings.port}
    paths = {route.path for route in create_app(settings).routes}  # type: ignore[attr-defined]
    expected = {"startupProbe": "/healthz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    for kind, path in expected.items():
        probe = spec[kind]
        assert set(probe) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"httpGet"}, kind
        assert ports[probe["httpGet"]["port"]] == settings.port and probe["httpGet"]["path"] == path
        assert path in paths
    # Prometheus scrapes the app's own /metrics, on the serving port.
    annotations = deployment(overlay, GATEWAY)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(settings.port)
    assert annotations["prometheus.io/path"] in paths
    # Its Service's port; the router by its headless Service, so the channel's round_robin reaches
    # every router pod (through the ClusterIP Service all its calls would go to one).
    services = objects(overlay, "Service")
    assert services[GATEWAY]["spec"]["ports"][0]["targetPort"] == "http"
    assert settings.router_address.startswith("dns:///")
    router_host, router_port = settings.router_address.removeprefix("dns:///").split(":")
    assert services[router_host]["spec"]["clusterIP"] == "None"
    assert int(router_port) == services[router_host]["spec"]["ports"][0]["port"]
    ledger_host, ledger_port = settings.ledger_address.split(":")
    assert int(ledger_port) == services[ledger_host]["spec"]["ports"][0]["port"]
    ledger = settings_from(monkeypatch, "ledger", environment(overlay, "ledger"))
    assert int(ledger_port) == ledger.port
    # One event loop: more than a core of limit buys nothing.
    assert quantity(spec["resources"]["limits"]["cpu"]) <= 1


# ---- Kubernetes: the overlays -----------------------------------------------------------------------


def test_production_calls_real_providers_with_pinned_images_in_a_restricted_namespace() -> None:
    overlay = "overlays/production"
    (namespace,) = objects(overlay, "Namespace").values()
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in render(overlay):
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == namespace["metadata"]["name"], obj["metadata"]["name"]
    for name in (*SERVICES, GATEWAY):
        image = container(overlay, name)["image"]
        repository, _, tag = image.rpartition(":")
        assert "/" in repository and tag and tag != "latest", image
    env = environment(overlay, "router")
    assert env["ROUTER_SIMULATOR"] == "never"
    assert "ROUTER_SIMULATOR_URL" not in env
    # PostgreSQL and Redis: addresses in the overlay, credentials in Secrets the operator creates.
    external = {
        name: s["spec"]["externalName"]
        for name, s in objects(overlay, "Service").items()
        if s["spec"].get("type") == "ExternalName"
    }
    assert set(external) == {"postgres", "redis"}
    refs = {
        item["name"]: item["valueFrom"]["secretKeyRef"]
        for name in SERVICES
        for item in container(overlay, name)["env"]
        if "valueFrom" in item
    }
    assert not refs["LEDGER_DATABASE_URL"].get("optional")
    assert not refs["ROUTER_REDIS_URL"].get("optional")
    for key in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GROQ_API_KEY"):
        assert refs[key]["optional"] is True  # a provider without a key is skipped
    assert not objects(overlay, "Secret"), "secrets are created by the operator, never committed"
    # Room for a disruption: at least two of each, one unavailable at a time.
    for autoscaler in objects(overlay, "HorizontalPodAutoscaler").values():
        assert autoscaler["spec"]["minReplicas"] >= 2
    assert deployment(overlay, "ledger")["spec"]["replicas"] >= 2


def test_dev_overlay_sends_every_call_to_its_simulator(monkeypatch: pytest.MonkeyPatch) -> None:
    overlay = "overlays/dev"
    router = settings_from(monkeypatch, "router", environment(overlay, "router"))
    simulator = settings_from(monkeypatch, "simulator", environment(overlay, "simulator"))
    service = objects(overlay, "Service")["simulator"]
    assert router.simulator == "always"
    assert router.simulator_url == f"http://simulator:{service['spec']['ports'][0]['port']}/v1"
    assert {p["containerPort"] for p in container(overlay, "simulator")["ports"]} == {simulator.port}
    assert router.redis_url == ""  # one replica, nothing to share


# ---- the router reloads a ConfigMap-mounted policy --------------------------------------------------


def _kubelet_update(directory: Path, files: dict[str, str], generation: int) -> None:
    """Write `files` into `directory` as the kubelet updates a ConfigMap volume (its AtomicWriter): a
    new timestamped directory, the `..data` symlink swapped to it by a rename, the old one removed;
    each file name is a symlink to `..data/<name>`."""
    new = directory / f"..2026_11_30_00_00_0{generation}.000000000"
    new.mkdir()
    for name, text in files.items():
        (new / name).write_text(text)
    old = (directory / "..data").resolve() if (directory / "..data").exists() else None
    (directory / "..data_tmp").symlink_to(new.name)
    os.rename(directory / "..data_tmp", directory / "..data")
    for name in files:
        if not (directory / name).is_symlink():
            (directory / name).symlink_to(f"..data/{name}")
    if old is not None:
        shutil.rmtree(old)


async def test_the_router_reloads_a_policy_config_map_updated_in_place(tmp_path: Path) -> None:
    text = POLICY.read_text()
    _kubelet_update(tmp_path, {"policy.yaml": text}, 1)
    source = PolicySource(tmp_path / "policy.yaml", poll_seconds=0.02)
    before = source.current().thresholds
    changed = Thresholds(moderate=0.11, complex=0.22, reasoning=0.33)
    watching = asyncio.create_task(source.watch())
    try:
        first = (tmp_path / "policy.yaml").stat().st_mtime_ns
        _kubelet_update(tmp_path, {"policy.yaml": rewrite(text, changed)}, 2)
        # Written within one tick of the filesystem's clock, both files could carry one mtime; on a node
        # the update comes seconds later, as here.
        os.utime(tmp_path / "policy.yaml", ns=(first + 10**9, first + 10**9))
        await eventually(lambda: source.current().thresholds != before, "the new policy taken")
    finally:
        watching.cancel()
    assert source.current().thresholds == changed


# ---- docker-compose: the scale profile ----------------------------------------------------------------

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
SCALED = {"router-a": "router", "router-b": "router", "ledger-a": "ledger", "ledger-b": "ledger"}


def _compose_env(name: str) -> dict[str, str]:
    """A service's environment as compose would set it with nothing exported (`${X:-d}` is d)."""
    return {
        key: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))
        for key, value in COMPOSE[name]["environment"].items()
    }


def test_plain_compose_up_is_unchanged_and_the_scale_profile_holds_the_rest() -> None:
    default = {name for name, service in COMPOSE.items() if "profiles" not in service}
    assert default == {"simulator", "ledger", "classifier", "router", "gateway"}
    scale = {name for name, service in COMPOSE.items() if "scale" in service.get("profiles", [])}
    assert scale == {*SCALED, "postgres", "redis"}
    assert default | scale == set(COMPOSE)


@pytest.mark.parametrize("name", sorted(SCALED))
def test_scaled_services_run_the_service_with_variables_it_reads(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = SCALED[name]
    declared = COMPOSE[name]
    assert declared["command"] == COMPOSE[service]["command"]
    assert declared["build"] == COMPOSE[service]["build"]
    env = _compose_env(name)
    unknown = set(env) - accepted_variables(service)
    assert not unknown, f"{name} sets variables its code does not read: {unknown}"
    settings = settings_from(monkeypatch, service, {k: v for k, v in env.items() if "${" not in v})
    assert settings.host == "0.0.0.0"
    assert settings.keys_file is not None or settings.allow_open  # else it refuses to start
    if service == "router":  # only routers are published, on the host's loopback
        (published,) = declared["ports"]
        assert published.startswith("127.0.0.1:") and published.endswith(f":{settings.port}")
    else:
        assert "ports" not in declared


def test_the_two_routers_share_redis_and_keep_their_own_spools(monkeypatch: pytest.MonkeyPatch) -> None:
    routers = [settings_from(monkeypatch, "router", _compose_env(n)) for n in ("router-a", "router-b")]
    urls = {r.redis_url for r in routers}
    assert len(urls) == 1
    url = make_url(urls.pop())
    assert (url.drivername, url.host, url.port or 6379) == ("redis", "redis", 6379)
    assert "redis" in COMPOSE["redis"]["image"]
    # A spool has one writer: each router its own volume.
    volumes = [COMPOSE[n]["volumes"] for n in ("router-a", "router-b")]
    assert volumes[0] != volumes[1]
    for name, router in zip(("router-a", "router-b"), routers, strict=True):
        assert any(v.endswith(f":{Path(router.spool_path).parent}") for v in COMPOSE[name]["volumes"])
        host, port = router.ledger_address.split(":")
        assert host in SCALED and SCALED[host] == "ledger"
        assert int(port) == int(_compose_env(host)["LEDGER_PORT"])
        assert {"redis", host} <= set(COMPOSE[name]["depends_on"])
    ports = {COMPOSE[n]["ports"][0].split(":")[1] for n in ("router-a", "router-b")}
    assert len(ports) == 2  # each on a host port of its own


def test_the_two_ledgers_share_postgresql(monkeypatch: pytest.MonkeyPatch) -> None:
    urls = {
        settings_from(monkeypatch, "ledger", _compose_env(n)).database_url for n in ("ledger-a", "ledger-b")
    }
    assert len(urls) == 1
    url = make_url(urls.pop())
    postgres = COMPOSE["postgres"]["environment"]
    assert url.drivername == "postgresql+asyncpg"
    assert (url.host, url.port) == ("postgres", 5432)
    assert (url.username, url.password, url.database) == (
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_PASSWORD"],
        postgres["POSTGRES_DB"],
    )
    for name in ("ledger-a", "ledger-b"):
        assert COMPOSE[name]["depends_on"]["postgres"] == {"condition": "service_healthy"}


# ---- API keys -------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_requires_keys_from_the_mounted_secret(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bound to 0.0.0.0, a service with no keys file refuses to start: each reads the keys Secret, mounted
    as a directory (so a changed Secret reaches it), and the router has its service key."""
    for name in SERVICES:
        settings = settings_from(monkeypatch, name, environment(overlay, name))
        assert settings.keys_file is not None and not settings.allow_open
        spec = deployment(overlay, name)["spec"]["template"]["spec"]
        [mount] = [m for m in container(overlay, name)["volumeMounts"] if m["name"] == "keys"]
        assert settings.keys_file.parent == Path(mount["mountPath"]) and "subPath" not in mount
        [volume] = [v for v in spec["volumes"] if v["name"] == "keys"]
        assert volume["secret"]["secretName"].startswith("llmroute-keys")
        assert [i["path"] for i in volume["secret"]["items"]] == [settings.keys_file.name]
    [ref] = [
        e["valueFrom"]["secretKeyRef"]
        for e in container(overlay, "router")["env"]
        if e["name"] == "ROUTER_SERVICE_KEY"
    ]
    assert ref["name"].startswith("llmroute-keys") and not ref.get("optional")


def test_the_dev_overlays_keys_let_the_router_act_as_a_service() -> None:
    [secret] = [
        o for o in render("overlays/dev") if o["kind"] == "Secret" and "keys" in o["metadata"]["name"]
    ]
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    keys_file = DEPLOY / "overlays" / "dev" / "keys.yaml"
    assert data["keys.yaml"] == keys_file.read_text()
    ring = auth.KeyRing(keys_file)
    router = ring.authenticate(data["router-service-key"])
    admin = ring.authenticate(data["LLMROUTE_ADMIN_KEY"])
    assert router is not None and router.roles == {"service"}
    assert admin is not None and admin.roles == {"admin"}
