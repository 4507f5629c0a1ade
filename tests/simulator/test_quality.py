"""Opt-in silent failures of small models on hard prompts."""

from __future__ import annotations

from simulator.quality import silent_failure, strength

HARD = (
    "Prove step by step that there are infinitely many primes, derive a bound on the n-th prime, then "
    "analyze the complexity of the sieve and explain the trade-offs of a segmented sieve in detail."
)


def test_small_models_fail_some_hard_prompts_and_never_easy_ones() -> None:
    assert strength("gpt-5-nano") < strength("gpt-5-mini") < strength("claude-opus-4-5") == 1.0
    prompts = [f"{HARD} Variant {n}." for n in range(40)]
    failures = [silent_failure("gpt-5-nano", p) for p in prompts]
    kinds = {f.fault for f in failures if f is not None}
    assert 20 <= sum(f is not None for f in failures) <= 38 and kinds == {"empty", "refusal"}
    assert all(silent_failure("claude-opus-4-5", p) is None for p in prompts)
    assert all(silent_failure("gpt-5-nano", f"Is this spam? 'free cruise' #{n}") is None for n in range(40))
    assert silent_failure("gpt-5-nano", prompts[0]) == silent_failure("gpt-5-nano", prompts[0])  # stable
