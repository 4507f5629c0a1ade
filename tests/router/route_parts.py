"""A Router built from its real steps in process, with a scripted classifier and provider (no network)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from difficulty import Conversation, Verdict
from llmroute.common.v1 import common_pb2
from router_svc.classification import Classification
from router_svc.cooldown import Cooldowns
from router_svc.providers import Providers
from router_svc.request import RouteInput
from router_svc.router import Router
from router_svc.settings import RouterSettings
from service_kit.policy import DEFAULT_POLICY_PATH, Policy, load_policy
from service_kit.pricing import PriceBook
from tests.doubles import RecordingSink
from tests.router.fake_provider import FakeProvider

PRICES = PriceBook.from_litellm()


@dataclass
class ScriptedClassifier:
    """A local strategy that answers `score` (and counts its calls)."""

    score: float = 0.1
    category: common_pb2.Category.ValueType = common_pb2.CATEGORY_CHAT
    name: str = "scripted"
    calls: int = 0

    async def warm_up(self) -> None:
        return None

    async def classify(self, conversation: Conversation) -> Verdict:
        self.calls += 1
        return Verdict(score=self.score, confidence=0.9, category=self.category, version="scripted/1")


@dataclass
class Parts:
    router: Router
    provider: FakeProvider
    sink: RecordingSink
    classifier: ScriptedClassifier
    cooldowns: Cooldowns
    policy: Policy = field(default_factory=lambda: load_policy(DEFAULT_POLICY_PATH))


def build(tmp_path: Path, *, score: float = 0.1, **settings: Any) -> Parts:
    values: dict[str, Any] = {
        "port": 0,
        "classifier_mode": "local",
        "simulator": "always",
        "budgets_enabled": False,
        "warm_up": False,
        "spool_path": tmp_path / "spool.db",
        "retry_backoff_seconds": 0.001,
        **settings,
    }
    router_settings = RouterSettings(**values)
    policy = load_policy(DEFAULT_POLICY_PATH)
    provider, sink, classifier = FakeProvider(), RecordingSink(), ScriptedClassifier(score)
    cooldowns = Cooldowns(router_settings.cooldown_after_failures, router_settings.cooldown_seconds)
    router = Router(
        settings=router_settings,
        policy=lambda: policy,
        prices=lambda: PRICES,
        providers=Providers("always", "http://simulator.invalid/v1"),
        classifier=Classification(local=classifier, remote=None),
        usage_sink=sink,
        cooldowns=cooldowns,
        acompletion=provider,
    )
    return Parts(router, provider, sink, classifier, cooldowns, policy)


def request(text: str = "What is the capital of France?", **options: Any) -> RouteInput:
    return RouteInput(
        messages=(common_pb2.ChatMessage(role="user", content=text),),
        request_id="r-1",
        caller="tests",
        **options,
    )
