"""Metadata keys that travel between the services."""

REQUEST_ID = "x-request-id"
CALLER = "x-caller"


def get(metadata: object, key: str) -> str:
    """The first value of `key` in gRPC invocation metadata, or ""."""
    for item in metadata or ():  # type: ignore[attr-defined]
        if item[0] == key:
            value = item[1]
            return value.decode() if isinstance(value, bytes) else str(value)
    return ""
