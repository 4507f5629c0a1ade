"""The one-minute soak (`make soak` runs it as long as asked): the services as processes under mixed
traffic with about 1% provider faults, then the ledger reconciled with the simulator, exactly."""

from __future__ import annotations

import pytest

from benchmarks.soak import soak

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def test_a_minute_of_mixed_faulty_traffic_loses_and_doubles_nothing() -> None:
    results = soak(duration=60, rate=8, latency_scale=0.3)
    # Every provider call the simulator received is one ledger attempt, per model; the only excess
    # allowed is a phantom (a call a client's deadline cut before it reached the simulator).
    assert results.reconciled, results.problems
    assert results.ledger_attempts - results.phantoms == results.simulator_calls
    assert results.simulator_calls > 0
    # Every request got a status a client can act on; none a bug's.
    assert set(results.by_status) <= {"OK", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "UNAVAILABLE"}
    assert results.by_status["OK"] >= 0.7 * results.sent
    assert results.by_status.get("RESOURCE_EXHAUSTED", 0) > 0  # the budgeted caller was stopped
    assert results.by_status.get("DEADLINE_EXCEEDED", 0) > 0  # the cancellations happened
    assert results.watch_snapshots > 0
    for name, figures in results.services.items():
        assert figures["fds_end"] - figures["fds_start"] < 64, (name, figures)
