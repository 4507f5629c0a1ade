"""The OpenAI-compatible HTTP gateway: `/v1/chat/completions` and friends onto the router's gRPC API."""
