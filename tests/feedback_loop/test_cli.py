"""`llmroute feedback`, `report` and `tune` against a real ledger holding a deployment's outcomes."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ledger_svc.settings import LedgerSettings
from llmroute.common.v1 import common_pb2 as C
from llmroute.ledger.v1 import ledger_pb2 as L
from llmroute_cli.commands import main
from service_kit.policy import DEFAULT_POLICY_PATH, Thresholds, load_policy
from tests.feedback_loop.test_tuning import COSTS, STATIC, world
from tests.ledger.conftest import Ledger, start_ledger, stop_ledger
from tests.ledger.ledger_helpers import now_us, record


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[Ledger]:
    running = await start_ledger(
        LedgerSettings(port=0, database_url=f"sqlite+aiosqlite:///{tmp_path / 'l.db'}")
    )
    yield running
    await stop_ledger(running)


async def deployment(ledger: Ledger, n: int, explore: float = 0.1) -> None:
    """n routed requests under the static thresholds, each graded by the judge, some explored."""
    scores, need, families = world(n, seed=11)
    rng = np.random.default_rng(12)
    at = now_us() - 3_600_000_000
    records = []
    for i, (score, needed) in enumerate(zip(scores, need, strict=True)):
        tier = (
            1 + int(score >= STATIC.moderate) + int(score >= STATIC.complex) + int(score >= STATIC.reasoning)
        )
        verdict = C.JUDGE_VERDICT_PASS if needed <= tier else C.JUDGE_VERDICT_FAIL
        common: dict[str, Any] = {
            "caller": "app",
            "run_id": f"run{i}",
            "score": float(score),
            "family": families[i],
            "policy_version": "v1-static",
        }
        records.append(
            record(
                f"q{i}",
                1,
                at=at + i,
                tier=tier,
                final=True,
                cost=float(COSTS[tier - 1]),
                judge_verdict=verdict,
                **common,
            )
        )
        if tier > 1 and rng.random() < explore:
            cheaper = C.JUDGE_VERDICT_PASS if needed <= tier - 1 else C.JUDGE_VERDICT_FAIL
            records.append(
                record(
                    f"q{i}",
                    1001,
                    at=at + i,
                    tier=tier - 1,
                    cost=float(COSTS[tier - 2]),
                    exploration=True,
                    judge_verdict=cheaper,
                    **common,
                )
            )
    for k in range(0, len(records), 500):
        await ledger.stub.RecordUsage(L.RecordUsageRequest(records=records[k : k + 500]))


def cli(*args: str) -> int:
    try:
        main(list(args))
    except SystemExit as exit_:
        if isinstance(exit_.code, str):  # what the interpreter would print on its way out
            print(exit_.code, file=sys.stderr)
            return 1
        return int(exit_.code or 0)
    return 0


async def test_tune_proposes_applies_and_refuses(
    ledger: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "policy.yaml"
    text = DEFAULT_POLICY_PATH.read_text()
    for name, value in STATIC.model_dump().items():
        text = text.replace(
            f"  {name}: {getattr(load_policy(DEFAULT_POLICY_PATH).thresholds, name):.4f}",
            f"  {name}: {value:.4f}",
        )
    policy.write_text(text)
    address = f"127.0.0.1:{ledger.running.port}"
    await deployment(ledger, 600)
    # Too few outcomes for the confidence asked: refused, with how many more are needed, nothing written.
    refused = await asyncio.to_thread(
        cli,
        "--ledger",
        address,
        "tune",
        "--quality",
        "0.95",
        "--policy",
        str(policy),
        "--apply",
        "--max-interval",
        "0.005",
        "--bootstrap",
        "30",
    )
    out = capsys.readouterr()
    assert refused == 3 and "more assessed requests are needed" in out.err
    assert load_policy(policy).thresholds == STATIC
    await deployment_more(ledger)
    applied = await asyncio.to_thread(
        cli,
        "--ledger",
        address,
        "tune",
        "--quality",
        "0.95",
        "--policy",
        str(policy),
        "--apply",
        "--max-interval",
        "0.2",
        "--bootstrap",
        "30",
    )
    out = capsys.readouterr()
    assert applied == 0, out.err
    assert "expected quality" in out.out and "cost per request" in out.out and "+++ proposed" in out.out
    tuned = load_policy(policy)
    assert (
        tuned.thresholds != STATIC and tuned.thresholds.complex > STATIC.complex
    )  # the static ones overspend
    assert f"policy {tuned.version_id}" in out.out


async def deployment_more(ledger: Ledger) -> None:
    await deployment(ledger, 3000)


async def test_tune_says_what_is_missing_when_nothing_can_be_fitted(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    await deployment(ledger, 40, explore=0.0)
    code = await asyncio.to_thread(
        cli, "--ledger", f"127.0.0.1:{ledger.running.port}", "tune", "--quality", "0.95"
    )
    assert code == 3 and "assessments of each kind" in capsys.readouterr().err


async def test_feedback_and_report(ledger: Ledger, capsys: pytest.CaptureFixture[str]) -> None:
    address = f"127.0.0.1:{ledger.running.port}"
    await ledger.stub.RecordUsage(
        L.RecordUsageRequest(
            records=[
                record(
                    "order-7",
                    1,
                    at=now_us() - 1000,
                    caller="shop",
                    run_id="r1",
                    tier=C.TIER_MODERATE,
                    final=True,
                    score=0.3,
                )
            ]
        )
    )
    assert (
        await asyncio.to_thread(
            cli,
            "--ledger",
            address,
            "feedback",
            "order-7",
            "--caller",
            "shop",
            "--verdict",
            "overkill",
            "--needed-tier",
            "simple",
        )
        == 0
    )
    assert "stored against run r1" in capsys.readouterr().out
    assert (
        await asyncio.to_thread(
            cli, "--ledger", address, "feedback", "order-8", "--caller", "shop", "--verdict", "good"
        )
        != 0
    )
    assert "NOT_FOUND" in capsys.readouterr().err
    assert await asyncio.to_thread(cli, "--ledger", address, "report", "--by", "tier", "caller") == 0
    out = capsys.readouterr().out
    assert "TIER_MODERATE" in out and "shop" in out and "100.0% too high" in out


def test_stale_policy_thresholds_are_the_fixture_ones() -> None:
    assert Thresholds(moderate=0.162, complex=0.2007, reasoning=0.4128) == STATIC
