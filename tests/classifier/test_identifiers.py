"""Identifiers change nothing: what strip_identifiers removes and keeps, and, with the shipped artifact
and policy, that no identifier style moves any prompt to another tier."""

from __future__ import annotations

import numpy as np
import pytest

from classifier_training import data, tiers
from difficulty import DEFAULT_ARTIFACT_DIR, Conversation, LearnedStrategy
from difficulty.identifiers import strip_identifiers
from service_kit.policy import DEFAULT_POLICY_PATH, load_policy

REMOVED = [
    ("Summarize this. (order #A-48213, ticket 99120)", "Summarize this."),
    ("Ticket 99120: Summarize this.", "Summarize this."),
    (
        "Is this spam? (ref 3f2a9c1e-7b4d-4e8a-9c2f-1a2b3c4d5e6f) Answer yes or no.",
        "Is this spam? Answer yes or no.",
    ),
    ("Hello [https://support.example.com/t/99120?src=app] there", "Hello there"),
    ("Write to <anna.k@example.com>", "Write to"),
    ("Do it (2026-03-14T10:32:05Z)", "Do it"),
    ("Logged 14/03/2026 10:32:05 UTC.", "Logged."),
    ("Due March 14, 2026, please.", "Due, please."),
    ("Revert commit 9fceb02d0ae598e95dc970b74767f19372d61af8 please", "Revert please"),
    ("Check account 004512339871.", "Check."),
    ("Invoice INV-20931, issued 2026-03-14, total due EUR 1,284.50.", "issued, total due EUR 1,284.50."),
    ("Call me at +1 415-555-0199 now", "Call me at now"),
    ("Trace 01HZX3K8Q2VFJ8 failed", "failed"),  # "trace" is a label
    ("Upload 01HZX3K8Q2VFJ8 failed", "Upload failed"),
    ("Key sk_live_4eC39HqLyjWDarjtT1zdp7 leaked", "Key leaked"),
    ("a\nTicket: 99120\nb", "a\nb"),
    ("x, order #A-48213.", "x."),
    ("x; (ref A-48213)", "x;"),
]
KEPT = [
    "She wants to order 150 cupcakes at 9:00 am on March 3.",  # a label with a small number is not an id
    "12 Rue de Rivoli, 75004 Paris",  # a postcode is data
    "x86_64, sha256, COVID-19 and the 1990s",
    "Case 1: n is even. Case 2: n is odd.",
    "If $q(x)=x^3+ax+b+240$, find b.",
    "The distance is 149,600,000 km, or 1.496e8 km.",
    "Compute 12345 * 6789.",  # five digits without a label stay
    "- item 1\n- item 2",
]


@pytest.mark.parametrize(("text", "expected"), REMOVED, ids=[t[:30] for t, _ in REMOVED])
def test_identifiers_and_their_labels_are_removed(text: str, expected: str) -> None:
    assert strip_identifiers(text) == expected


@pytest.mark.parametrize("text", KEPT, ids=[t[:30] for t in KEPT])
def test_numbers_that_are_content_stay(text: str) -> None:
    assert strip_identifiers(text) == text


def test_every_style_at_every_position_strips_to_the_original() -> None:
    prompts = [p.messages[-1][1] for p in data.load_app_prompts()] + tiers.demo_prompts()
    for prompt in prompts:
        base = strip_identifiers(prompt)
        for style, variant in tiers.identifier_variants(prompt):
            assert strip_identifiers(variant) == base, (style, prompt[:60])


@pytest.fixture(scope="module")
def shipped() -> tuple[LearnedStrategy, object]:
    strategy = LearnedStrategy(DEFAULT_ARTIFACT_DIR)
    return strategy, load_policy(DEFAULT_POLICY_PATH).thresholds


def _sample(rows: list[data.Outcome], n: int) -> list[tiers.Messages]:
    pick = np.random.default_rng(7).choice(len(rows), size=n, replace=False)
    return [(("user", rows[i].prompt),) for i in sorted(pick)]


def test_no_identifier_style_changes_a_tier(shipped: tuple[LearnedStrategy, object]) -> None:
    """Twelve styles (tiers.IDENTIFIER_STYLES), each appended, inserted after the first sentence and put
    on a first line of its own, over every app prompt, the demo workload and samples of the outcome data,
    routed by the shipped artifact at the shipped thresholds: no tier and no score may change."""
    strategy, thresholds = shipped
    conversations = [
        *(
            p.messages
            for path in (data.APP_PROMPTS_PATH, data.APP_PROMPTS_2_PATH)
            for p in data.load_app_prompts(path)
        ),
        *((("user", p),) for p in tiers.demo_prompts()),
        *_sample(data.load_multimodel(), 150),
        *_sample(data.load_outcomes(), 150),
    ]

    result = tiers.invariance(
        lambda messages: strategy.classify_sync(Conversation.of(*messages)).score,
        conversations,
        thresholds,  # type: ignore[arg-type]
    )

    assert result.prompts == len(conversations) and result.variants == 36 * len(conversations)
    assert result.tier_changes == 0, result.changes[:10]
    assert result.score_changes == 0
