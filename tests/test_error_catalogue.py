"""One error catalogue: the reasons the services send, their statuses, the contract's enum and the docs agree."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from llmroute.common.v1 import common_pb2
from service_kit import errors
from service_kit.errors import STATUS, Reason, ServiceError

ROOT = Path(__file__).resolve().parent.parent
SERVICE_CODE = (
    "router_svc",
    "classifier_svc",
    "ledger_svc",
    "gateway",
    "service_kit",
    "ledger_client",
    "difficulty",
)


def _error_classes() -> dict[str, type[ServiceError]]:
    """Every ServiceError subclass the services define, by name."""
    import ledger_svc.budgets
    import router_svc.idempotency
    import service_kit.auth

    found: dict[str, type[ServiceError]] = {}
    for module in (errors, service_kit.auth, router_svc.idempotency, ledger_svc.budgets):
        for name, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, ServiceError):
                found[name] = value
    return found


def test_the_contracts_enum_is_the_catalogue() -> None:
    values = common_pb2.ErrorReason.DESCRIPTOR.values
    assert [v.name.removeprefix("ERROR_REASON_") for v in values if v.number != 0] == [r.name for r in Reason]
    assert set(STATUS) == set(Reason)


_CLASSES = sorted(_error_classes().values(), key=lambda k: k.__name__)


@pytest.mark.parametrize("kind", _CLASSES, ids=[k.__name__ for k in _CLASSES])
def test_each_error_class_default_reason_has_its_status(kind: type[ServiceError]) -> None:
    assert STATUS[kind.default_reason] == kind.code


def _raised_reasons() -> list[tuple[str, str, str]]:
    """(where, error class, reason) for every error the service code constructs with a reason."""
    found = []
    for package in SERVICE_CODE:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.Call):
                    continue
                kind = node.func.id if isinstance(node.func, ast.Name) else ""
                for keyword in node.keywords:
                    if keyword.arg != "reason":
                        continue
                    where = f"{path.relative_to(ROOT)}:{node.lineno}"
                    value = keyword.value
                    if (
                        isinstance(value, ast.Attribute)
                        and isinstance(value.value, ast.Name)
                        and value.value.id == "Reason"
                    ):
                        found.append((where, kind, value.attr))
                    elif isinstance(value, ast.Constant) and str(value.value).isupper():
                        found.append((where, kind, f"literal {value.value!r}"))  # not the catalogue's
    return found


def test_every_raise_uses_a_catalogued_reason_with_its_status() -> None:
    raised = _raised_reasons()
    classes = _error_classes()
    assert len(raised) > 20  # the scan sees the services' errors
    wrong = [
        (where, kind, reason)
        for where, kind, reason in raised
        if reason not in Reason.__members__
        or (kind in classes and STATUS[Reason[reason]] != classes[kind].code)
    ]
    assert wrong == []


def test_the_docs_list_every_reason_with_its_status() -> None:
    table = (ROOT / "docs" / "errors.md").read_text()
    for reason, code in STATUS.items():
        assert f"| `{reason}` | `{code.name}` |" in table
