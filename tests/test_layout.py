"""The repository's boundaries, read from the code: no service imports another service's package, the
shared libraries import no service, the router runs the local model with `difficulty` alone, and no
file of the classifier's packages is over 400 lines."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Each runs as its own process, in its own image.
SERVICES = ("router_svc", "classifier_svc", "ledger_svc", "gateway", "simulator")
# What two services share lives here, never in one of them.
LIBRARIES = ("difficulty", "service_kit", "ledger_client", "llmroute_client")
MAX_LINES = 400


def _imports(package: str) -> dict[str, set[str]]:
    """Top-level package -> files of `package` importing it: absolute imports at any depth (lazy ones
    in functions too) and `importlib.import_module("...")` with a literal name."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif (
                isinstance(node, ast.Call)
                and (getattr(node.func, "attr", None) or getattr(node.func, "id", None)) == "import_module"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                names = [node.args[0].value]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize("service", SERVICES)
def test_no_service_imports_another_service(service: str) -> None:
    imports = _imports(service)
    crossing = {other: sorted(imports[other]) for other in SERVICES if other != service and other in imports}
    assert not crossing, f"{service} imports other services' packages: {crossing}"


@pytest.mark.parametrize("library", LIBRARIES)
def test_shared_libraries_import_no_service(library: str) -> None:
    imports = _imports(library)
    services = {service: sorted(imports[service]) for service in SERVICES if service in imports}
    assert not services, f"{library} imports service packages: {services}"


@pytest.mark.parametrize("package", ["difficulty", "classifier_svc"])
def test_no_file_over_400_lines(package: str) -> None:
    long = {
        str(path.relative_to(ROOT)): n
        for path in (ROOT / package).rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"over {MAX_LINES} lines: {long}"


def test_the_router_classifies_in_process_without_the_classifier_service() -> None:
    """ROUTER_CLASSIFIER_MODE=local: the learned model answers, and neither classifier_svc nor its
    semantic cache is loaded (a fresh interpreter, so nothing else has imported them)."""
    script = """
import asyncio
import sys

from llmroute.common.v1 import common_pb2
from router_svc.classification import Classification
from router_svc.settings import RouterSettings


async def main() -> None:
    classification = Classification.from_settings(RouterSettings(classifier_mode="local"))
    await classification.warm_up()
    message = common_pb2.ChatMessage(role="user", content="Is this email spam? 'You won a cruise!'")
    classified, warnings = await classification.classify([message], "layout-test", 1.0)
    assert classified.verdict.version.startswith("learned/") and not warnings, (classified.verdict.version, warnings)
    await classification.close()


asyncio.run(main())
loaded = sorted(name for name in sys.modules if name.split(".")[0] == "classifier_svc")
assert not loaded, loaded
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, check=True, timeout=120)
