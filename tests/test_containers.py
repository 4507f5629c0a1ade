"""docker-compose.yml and the Dockerfiles agree with what the code reads (no Docker engine runs here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic_settings import BaseSettings

from classifier_svc.settings import ClassifierSettings
from devstack.stack import MODULES, Ports, Stack
from gateway.settings import GatewaySettings
from ledger_svc.settings import LedgerSettings
from router_svc.settings import RouterSettings
from service_kit.providers import PROVIDER_KEYS
from simulator.settings import SimulatorSettings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
SETTINGS: dict[str, tuple[type[BaseSettings], str]] = {
    "router": (RouterSettings, "ROUTER_"),
    "classifier": (ClassifierSettings, "CLASSIFIER_"),
    "ledger": (LedgerSettings, "LEDGER_"),
    "simulator": (SimulatorSettings, "SIMULATOR_"),
    "gateway": (GatewaySettings, "GATEWAY_"),
}
DOCKERFILES = {
    "router": "router_svc",
    "classifier": "classifier_svc",
    "ledger": "ledger_svc",
    "simulator": "simulator",
    "gateway": "gateway",
}


@pytest.mark.parametrize("service", sorted(MODULES))
def test_compose_service_matches_the_code(service: str) -> None:
    declared = COMPOSE[service]
    settings_class, prefix = SETTINGS[service]
    env = {key: str(value) for key, value in declared["environment"].items()}
    # The command is the module the dev stack and the image run.
    assert declared["command"] == ["python", "-m", MODULES[service]]
    # Every variable is one the service reads: a settings field under its prefix, or a provider key.
    fields = {prefix + name.upper() for name in settings_class.model_fields}
    unknown = {k for k in env if k not in fields and k not in PROVIDER_KEYS.values()}
    assert not unknown, f"{service} sets variables its code does not read: {unknown}"
    # Only the router (and the gateway) is published, on the host's loopback only, on the port it
    # listens on and the image exposes; the others are reached on compose's network.
    port = int(env[f"{prefix}PORT"])
    published = [f"127.0.0.1:{port}:{port}"] if service in ("router", "gateway") else None
    assert declared.get("ports") == published
    assert env[f"{prefix}HOST"] == "0.0.0.0"
    # Bound beyond loopback, a service needs API keys or says it runs open on purpose.
    if service != "simulator" and service != "gateway":
        assert env.get(f"{prefix}ALLOW_OPEN") == "true" or f"{prefix}KEYS_FILE" in env
    dockerfile = (ROOT / DOCKERFILES[service] / "Dockerfile").read_text()
    assert re.search(rf"^EXPOSE {port}$", dockerfile, re.M)
    assert declared["build"] == {"context": ".", "dockerfile": f"{DOCKERFILES[service]}/Dockerfile"}
    # The dev stack (and so the end-to-end tests) sets the same variables, bar a state path it owns.
    stack_env = Stack(state_dir=Path("/tmp/x"), ports=Ports()).environments()[service]
    assert set(stack_env) <= set(env)


@pytest.mark.parametrize("service", sorted(MODULES))
def test_dockerfile_is_slim_non_root_and_health_checked(service: str) -> None:
    dockerfile = (ROOT / DOCKERFILES[service] / "Dockerfile").read_text()
    assert re.findall(r"^FROM (\S+)", dockerfile, re.M)[-1] == "python:3.11-slim"
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users and users[-1] not in ("root", "0")
    assert "HEALTHCHECK" in dockerfile
    assert f'CMD ["python", "-m", "{MODULES[service]}"]' in dockerfile
    # Every path the image copies exists in the repository (the build context).
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.M):
        for path in source.split():
            assert (ROOT / path).exists(), f"{service} Dockerfile copies missing {path}"


def test_router_points_at_the_other_services_by_compose_name() -> None:
    env = COMPOSE["router"]["environment"]
    assert (
        env["ROUTER_CLASSIFIER_ADDRESS"]
        == f"classifier:{COMPOSE['classifier']['environment']['CLASSIFIER_PORT']}"
    )
    assert env["ROUTER_LEDGER_ADDRESS"] == f"ledger:{COMPOSE['ledger']['environment']['LEDGER_PORT']}"
    assert (
        env["ROUTER_SIMULATOR_URL"]
        == f"http://simulator:{COMPOSE['simulator']['environment']['SIMULATOR_PORT']}/v1"
    )
    assert set(COMPOSE["router"]["depends_on"]) == {"classifier", "ledger", "simulator"}
    # Defaults in code match the compose ports, so a bare `python -m router_svc` finds its peers locally.
    assert RouterSettings().classifier_address.endswith(":" + str(ClassifierSettings().port))
    assert RouterSettings().ledger_address.endswith(":" + str(LedgerSettings().port))


def test_gateway_points_at_the_router_and_the_ledger_by_compose_name() -> None:
    env = COMPOSE["gateway"]["environment"]
    assert env["GATEWAY_ROUTER_ADDRESS"] == f"router:{COMPOSE['router']['environment']['ROUTER_PORT']}"
    assert env["GATEWAY_LEDGER_ADDRESS"] == f"ledger:{COMPOSE['ledger']['environment']['LEDGER_PORT']}"
    assert set(COMPOSE["gateway"]["depends_on"]) == {"router", "ledger"}
    # The policy it lists models from is the router's, at the path the router's image holds it.
    assert env["GATEWAY_POLICY_PATH"] == COMPOSE["router"]["environment"]["ROUTER_POLICY_PATH"]
    # A bare `python -m gateway` finds the services' default ports.
    assert GatewaySettings().router_address.endswith(":" + str(RouterSettings().port))
    assert GatewaySettings().ledger_address.endswith(":" + str(LedgerSettings().port))


FIRST_PARTY = (
    "service_kit",
    "difficulty",
    "classifier_svc",
    "classifier_training",
    "router_svc",
    "ledger_svc",
    "ledger_client",
    "llmroute_client",
    "simulator",
    "gateway",
)


def _imported_modules(package: str) -> set[Path]:
    """Files of every first-party module the package imports, transitively, lazily imported ones too."""
    import ast
    import importlib.util

    seen: set[Path] = set()
    pending = list((ROOT / package).rglob("*.py"))
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
                # `from package import module` imports the module too.
                names += [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                if name.split(".")[0] not in FIRST_PARTY:
                    continue
                parent, _, leaf = name.rpartition(".")
                if parent:
                    # Found without importing anything: a name of a module is not a module.
                    top = importlib.util.find_spec(parent.split(".")[0])
                    if top is None or top.submodule_search_locations is None:
                        continue
                    base = Path(next(iter(top.submodule_search_locations)))
                    stem = base.joinpath(*parent.split(".")[1:], leaf)
                    candidates = [stem.with_suffix(".py"), stem / "__init__.py"]
                else:
                    spec = importlib.util.find_spec(name)
                    candidates = [Path(spec.origin)] if spec is not None and spec.origin else []
                pending.extend(c for c in candidates if c.suffix == ".py" and c.is_file())
    return seen


@pytest.mark.parametrize("service", sorted(MODULES))
def test_image_holds_every_module_the_service_imports(service: str) -> None:
    dockerfile = (ROOT / DOCKERFILES[service] / "Dockerfile").read_text()
    copied = [
        ROOT / p for line in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.M) for p in line.split()
    ]
    missing = [
        str(path.relative_to(ROOT))
        for path in _imported_modules(DOCKERFILES[service])
        if not any(path == c or c in path.parents for c in copied)
    ]
    assert not missing, f"{service} image lacks {missing}"


@pytest.mark.parametrize("service", sorted(MODULES))
def test_image_holds_only_what_the_service_runs(service: str) -> None:
    """Every first-party package an image copies is one its service imports: the router's image has the
    local model (difficulty), not the classifier service; the classifier's has no training code."""
    dockerfile = (ROOT / DOCKERFILES[service] / "Dockerfile").read_text()
    copied = {
        Path(p).parts[0]
        for line in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.M)
        for p in line.split()
    }
    imported = {path.relative_to(ROOT).parts[0] for path in _imported_modules(DOCKERFILES[service])}
    unused = sorted(copied & set(FIRST_PARTY) - imported)
    assert not unused, f"{service} image copies packages its service never imports: {unused}"
