"""router_svc: serves Route: classify, pick the cheapest adequate model, call it, validate, account."""

# The caller under which the router's own warm-up calls are accounted.
WARM_UP_CALLER = "llmroute-warmup"

# The providers llmroute knows how to authenticate out of the box, and the variable holding the key.
PROVIDER_KEYS = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "groq": "GROQ_API_KEY",
    "gemini": "GEMINI_API_KEY",
    "mistral": "MISTRAL_API_KEY",
    "deepseek": "DEEPSEEK_API_KEY",
    "together_ai": "TOGETHERAI_API_KEY",
    "fireworks_ai": "FIREWORKS_AI_API_KEY",
    "openrouter": "OPENROUTER_API_KEY",
}
