"""The warm-up of a local model before serving: loaded, then a few fixed conversations classified."""

from __future__ import annotations

from difficulty import Conversation, Strategy

__all__ = ["WARM_UP_CONVERSATIONS", "warm_up_local"]

# Classified once at start so that the first real request pays no lazy loading (model weights,
# regex compilation, numpy kernels). Short, varied, and free of anything a user wrote.
WARM_UP_CONVERSATIONS: tuple[Conversation, ...] = (
    Conversation.user("Is this email spam? 'You won a free cruise, click here.'"),
    Conversation.user("Summarize the key points of the attached meeting notes in three bullets."),
    Conversation.user("Write a Python function that merges two sorted lists, with tests."),
    Conversation.user("Prove that the square root of 2 is irrational, step by step."),
    Conversation.of(
        ("system", "You are a helpful assistant."),
        ("user", "hi"),
        ("assistant", "Hello!"),
        ("user", "thanks"),
    ),
)


async def warm_up_local(strategy: Strategy) -> None:
    """Load the local model and classify the warm-up conversations with it."""
    await strategy.warm_up()
    for conversation in WARM_UP_CONVERSATIONS:
        await strategy.classify(conversation)
