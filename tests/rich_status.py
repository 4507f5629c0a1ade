"""A failed call's rich status (AIP-193), read the way a client reads it: `details` is llmroute_client's
own unpacking (`errors.from_rpc_error`), so every test that reads a status also checks the client's;
`Details` is what it returns (code, message, reason, metadata, violations)."""

from __future__ import annotations

from llmroute_client.errors import LLMRouteError as Details
from llmroute_client.errors import from_rpc_error as details

__all__ = ["Details", "details"]
