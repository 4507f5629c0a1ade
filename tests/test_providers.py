"""One table of provider keys: the router and the classifier's LLM agree on what "a key is set" means."""

from __future__ import annotations

import pytest

from classifier_svc.settings import ClassifierSettings
from classifier_svc.strategies.llm_model import llm_configured
from router_svc.providers import Providers
from service_kit.policy import ModelSpec
from service_kit.providers import any_key, has_key, key_variable


def test_pydantic_ai_prefixes_map_to_the_litellm_providers_keys() -> None:
    assert (
        key_variable("openai-responses")
        == key_variable("openai-chat")
        == key_variable("openai")
        == "OPENAI_API_KEY"
    )
    assert key_variable("anthropic") == "ANTHROPIC_API_KEY" and key_variable("no-such-provider") is None
    assert has_key("groq", {"GROQ_API_KEY": "k"}) and not has_key("groq", {"GROQ_API_KEY": ""})
    assert any_key({"MISTRAL_API_KEY": "k"}) and not any_key({"UNRELATED": "k"})


@pytest.mark.parametrize(("variable", "llm_model", "router_model"), [
    ("ANTHROPIC_API_KEY", "anthropic:claude-haiku-4-5", "claude-haiku-4-5"),
    ("OPENAI_API_KEY", "openai-responses:gpt-5-nano", "gpt-5-nano"),
    ("GROQ_API_KEY", "groq:openai/gpt-oss-20b", "groq/openai/gpt-oss-20b"),
])  # fmt: skip
def test_one_key_enables_the_provider_for_both_services(
    monkeypatch: pytest.MonkeyPatch, variable: str, llm_model: str, router_model: str
) -> None:
    settings = ClassifierSettings(llm_model=llm_model, llm_base_url=None)
    for present in (False, True):
        environ = {variable: "secret"} if present else {}
        if present:
            monkeypatch.setenv(variable, "secret")
        else:
            monkeypatch.delenv(variable, raising=False)
        router_can_call = Providers("auto", "http://sim/v1", environ=environ).resolve(
            ModelSpec(model=router_model)
        )
        assert llm_configured(settings) is present
        # Without any key the router sends the call to the simulator; with this one, to the provider.
        assert router_can_call is not None and router_can_call.simulated is not present
