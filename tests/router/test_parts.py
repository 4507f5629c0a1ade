"""The router's parts on their own: prices, providers, cooldowns, validators, policy reload, idempotency."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from llmroute.common.v1 import common_pb2
from router_svc.cooldown import Cooldowns
from router_svc.providers import Providers
from router_svc.validators import DEFAULT_VALIDATORS, Answer, Expectations, first_failure
from service_kit.litellm_offline import litellm
from service_kit.policy import DEFAULT_POLICY_PATH, ModelSpec, PolicyError, load_policy
from service_kit.policy_source import PolicySource
from service_kit.pricing import PriceBook


def test_prices_come_from_litellms_map_with_cached_and_reasoning_tokens() -> None:
    prices = PriceBook.from_litellm()
    entry = litellm.model_cost["gpt-5-mini"]
    cost = prices.cost(
        "gpt-5-mini", input_tokens=1000, output_tokens=500, cached_input_tokens=200, reasoning_tokens=100
    )
    expected = (
        800 * entry["input_cost_per_token"]
        + 200 * entry["cache_read_input_token_cost"]
        + 500 * entry["output_cost_per_token"]
    )
    assert cost.known and math.isclose(cost.usd, expected)
    assert prices.version.startswith("litellm-")
    unknown = prices.cost("acme/never-heard-of-it", 1000, 1000)
    assert not unknown.known and unknown.usd == 0.0


def test_price_overrides_change_the_price_and_the_version(tmp_path: Path) -> None:
    overrides = tmp_path / "prices.yaml"
    overrides.write_text(
        "gpt-5-mini: {input_cost_per_token: 0.001}\nacme/custom: {input_cost_per_token: 1.0e-6, output_cost_per_token: 2.0e-6}\n"
    )
    prices = PriceBook.from_litellm(overrides)
    assert prices.cost("gpt-5-mini", 10, 0).usd == pytest.approx(0.01)
    assert prices.cost("acme/custom", 1, 1).usd == pytest.approx(3e-6)
    assert "+overrides-" in prices.version and prices.version != PriceBook.from_litellm().version


def test_providers_simulate_everything_without_keys_and_only_keyed_providers_with_keys() -> None:
    spec = ModelSpec(model="claude-haiku-4-5")
    offline = Providers("auto", "http://sim/v1", environ={})
    route = offline.resolve(spec)
    assert route is not None and route.simulated and route.kwargs["model"] == "openai/claude-haiku-4-5"
    assert route.provider == "anthropic"

    keyed = Providers("auto", "http://sim/v1", environ={"OPENAI_API_KEY": "sk-test"})
    assert keyed.resolve(spec) is None  # no Anthropic key: skipped, not simulated
    openai_route = keyed.resolve(ModelSpec(model="gpt-5-mini"))
    assert (
        openai_route is not None
        and not openai_route.simulated
        and openai_route.kwargs == {"model": "gpt-5-mini"}
    )

    local = ModelSpec(model="hosted_vllm/llama", api_base="http://vllm:8000/v1")
    assert keyed.resolve(local) is not None
    own_key = ModelSpec(model="openai/my-model", api_base="http://x/v1", api_key_env="MY_KEY")
    assert keyed.resolve(own_key) is None
    resolved = Providers("auto", "", environ={"MY_KEY": "k", "GROQ_API_KEY": "g"}).resolve(own_key)
    assert resolved is not None and resolved.kwargs["api_key"] == "k"


def test_cooldown_opens_after_repeated_failures_and_one_probe_closes_it() -> None:
    now = [0.0]
    cooldowns = Cooldowns(after_failures=2, seconds=10, clock=lambda: now[0])
    cooldowns.failure("m")
    assert cooldowns.available("m")
    cooldowns.failure("m")
    assert not cooldowns.available("m") and cooldowns.in_cooldown("m")
    now[0] = 11
    assert cooldowns.available("m")  # the probe
    assert not cooldowns.available("m")  # only one probe at a time
    cooldowns.failure("m")  # the probe failed: open again
    assert not cooldowns.available("m")
    now[0] = 22
    assert cooldowns.available("m")
    cooldowns.success("m")
    assert cooldowns.available("m") and cooldowns.available("m") and not cooldowns.in_cooldown("m")


def test_a_retry_after_holds_a_model_that_long_and_never_shortens_an_open_breaker() -> None:
    now = [0.0]
    opened: list[tuple[str, float]] = []
    cooldowns = Cooldowns(after_failures=3, seconds=10, clock=lambda: now[0])
    cooldowns.listen(lambda model, seconds: opened.append((model, seconds)), lambda model: None)
    cooldowns.failure("m")
    cooldowns.hold("m", 2)  # one failure, but the provider asked for 2 s
    assert not cooldowns.available("m") and opened == [("m", 2)]
    now[0] = 2.5
    assert cooldowns.available("m")  # then one probe, as after any cooldown
    assert not cooldowns.available("m")
    cooldowns.success("m")
    for _ in range(3):
        cooldowns.failure("m")  # open for 10 s
    cooldowns.hold("m", 1)
    now[0] = 2.5 + 5
    assert not cooldowns.available("m") and opened[-1] == ("m", 10)


@pytest.mark.parametrize(
    ("content", "finish", "expect", "reason"),
    [
        ("fine", "stop", Expectations(), None),
        ("  ", "stop", Expectations(), "empty_output"),
        ("cut", "length", Expectations(), "truncated_output"),
        ("cut", "length", Expectations(caller_capped_output=True), None),
        ("I'm sorry, but I can't help with that.", "stop", Expectations(), "refusal"),
        ("{oops", "stop", Expectations(json_output=True), "invalid_json"),
        ('```json\n{"a": 1}\n```', "stop", Expectations(json_output=True), None),
        (
            '{"a": "secret"}',
            "stop",
            Expectations(json_schema={"type": "object", "properties": {"a": {"type": "integer"}}}),
            "schema_mismatch",
        ),
    ],
)
def test_validators(content: str, finish: str, expect: Expectations, reason: str | None) -> None:
    found = first_failure(Answer(content, finish, 10), expect, DEFAULT_VALIDATORS)
    assert (found or "").split(":")[0] == (reason or "")
    assert "secret" not in (found or "")  # reasons are logged and stored: never the model's output


def test_an_invalid_policy_is_rejected_and_the_old_one_stays(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(DEFAULT_POLICY_PATH.read_text())
    source = PolicySource(path)
    before = source.current()
    out_of_order = yaml.safe_load(DEFAULT_POLICY_PATH.read_text())
    out_of_order["thresholds"]["moderate"] = 0.99
    path.write_text(yaml.safe_dump(out_of_order))
    assert not source.reload()  # thresholds out of order
    assert source.current() is before
    path.write_text(
        DEFAULT_POLICY_PATH.read_text().replace(
            "baseline_model: claude-sonnet-4-5", "baseline_model: gpt-5.1"
        )
    )
    assert source.reload() and source.current().baseline_model == "gpt-5.1"
    with pytest.raises(PolicyError, match="tiers without candidate models"):
        path.write_text(
            "baseline_model: x\nthresholds: {moderate: 0.1, complex: 0.2, reasoning: 0.3}\ntiers: {simple: []}\n"
        )
        load_policy(path)


def test_thresholds_cut_scores_into_tiers_and_shift_under_budget_pressure() -> None:
    thresholds = load_policy(DEFAULT_POLICY_PATH).thresholds
    assert thresholds.tier_for(0.0) == common_pb2.TIER_SIMPLE
    assert thresholds.tier_for(thresholds.reasoning) == common_pb2.TIER_REASONING
    assert thresholds.tier_for(thresholds.complex, shift=0.01) == common_pb2.TIER_MODERATE


async def test_price_refresh_from_a_file_replaces_the_map_and_a_bad_file_keeps_it(tmp_path: Path) -> None:
    import json

    from service_kit.pricing import PriceSource

    source_file = tmp_path / "prices.json"
    source = PriceSource(None, str(source_file), refresh_seconds=3600)
    bundled = source.current()
    source_file.write_text("not json")
    assert not await source.refresh() and source.current() is bundled

    source_file.write_text(
        json.dumps({"gpt-5-nano": {"input_cost_per_token": 1e-3, "output_cost_per_token": 2e-3}})
    )
    assert await source.refresh()
    refreshed = source.current()
    assert refreshed.version.startswith("refreshed-") and refreshed.version != bundled.version
    assert refreshed.cost("gpt-5-nano", 1, 1).usd == pytest.approx(3e-3)
    assert not refreshed.cost("gpt-5-mini", 1, 1).known  # the refreshed map is the whole map


def test_an_abandoned_probe_expires_and_a_released_one_frees_the_slot() -> None:
    now = [0.0]
    cooldowns = Cooldowns(after_failures=1, seconds=10, clock=lambda: now[0])
    cooldowns.failure("m")
    now[0] = 11
    assert cooldowns.available("m") and not cooldowns.available("m")  # probe taken, never reports
    now[0] = 22
    assert cooldowns.available("m")  # the abandoned probe expired: a new one may go
    cooldowns.release("m")  # that one was cancelled before a verdict
    assert cooldowns.available("m")
