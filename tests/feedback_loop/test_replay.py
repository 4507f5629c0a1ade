"""`make replay`'s machinery on a short stream: the loop routes, grades, explores, takes feedback and
tunes through the real router, ledger and simulator (the full figures are in docs/feedback-loop.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from feedback_loop.replay import Settings, load_world, oracle_thresholds, replay


async def test_a_short_replay_of_the_loop(tmp_path: Path) -> None:
    settings = Settings(requests=240, every=120, explore=0.2, feedback=0.2, window=100, out=tmp_path)
    world = load_world(settings.requests, settings.seed)
    assert len(world) == 240 and all(item.good[3] for item in world)  # the top tier is always enough
    static = await replay("static", world, settings, tmp_path / "static", None, tune=False)
    loop = await replay("loop", world, settings, tmp_path / "loop", None, tune=True)
    # Every request was routed and measured; the loop explored (and paid for it) and tuned once.
    assert len(static.tiers) == len(loop.tiers) == 240 and set(static.tiers) <= {1, 2, 3, 4}
    assert loop.exploration_usd[-1] > 0 and static.exploration_usd[-1] == 0
    [event] = loop.tunings
    assert event["at"] == 120 and ("applied" in event or "refused" in event)
    # Before the first tuning, the loop routes exactly as the static policy does.
    assert loop.tiers[:120] == static.tiers[:120]
    assert np.mean(static.good) == np.mean(
        [item.good[t - 1] for item, t in zip(world, static.tiers, strict=True)]
    )
    oracle = oracle_thresholds(world, static, 0.9)
    assert 0 <= oracle.moderate <= oracle.complex <= oracle.reasoning <= 1
