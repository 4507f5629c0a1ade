"""A Python client for llmroute's Route API: `route("...")` in one line, or `Client`/`AsyncClient`.

```python
from llmroute_client import AsyncClient, route

print(route("Is this spam? 'You won a cruise'").content)

async with AsyncClient() as client:
    reply = await client.route("Summarize: ...", caller="search-team/summaries")
    async for text in client.stream("Write a haiku about routers"):
        print(text, end="")
```

The address and key come from the environment (`LLMROUTE_ADDRESS`, default 127.0.0.1:50051;
`LLMROUTE_API_KEY`, or the file `LLMROUTE_API_KEY_FILE` names; `LLMROUTE_CA_FILE` for TLS). Every call
has a deadline (60 s by default) and a request id: an `UNAVAILABLE` call is retried with backoff under
the same id, so the router replays an answer it already gave instead of paying for it twice. A failed
call raises an `LLMRouteError` subclass carrying the rich status: its reason, metadata and field
violations.
"""

from llmroute_client.client import AsyncClient, Client, route
from llmroute_client.errors import (
    AlreadyExists,
    BudgetExceeded,
    InvalidArgument,
    LLMRouteError,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)

__all__ = [
    "AlreadyExists",
    "AsyncClient",
    "BudgetExceeded",
    "Client",
    "InvalidArgument",
    "LLMRouteError",
    "PermissionDenied",
    "Unauthenticated",
    "Unavailable",
    "route",
]
