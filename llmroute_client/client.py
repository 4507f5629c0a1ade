"""`AsyncClient` and `Client` over the router's Route and RouteStream RPCs."""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from llmroute.common.v1 import common_pb2
from llmroute.router.v1 import router_pb2, router_pb2_grpc
from llmroute_client.errors import from_rpc_error

DEFAULT_ADDRESS = "127.0.0.1:50051"
Messages = str | Sequence[tuple[str, str]] | Sequence[common_pb2.ChatMessage]


def from_environment(name: str) -> str:
    """`NAME` from the environment, else the contents of the file `NAME_FILE` names, else ''."""
    value = os.environ.get(name, "")
    if value:
        return value.strip()
    path = os.environ.get(f"{name}_FILE", "")
    return Path(path).read_text().strip() if path else ""


def _messages(prompt: Messages) -> list[common_pb2.ChatMessage]:
    if isinstance(prompt, str):
        return [common_pb2.ChatMessage(role="user", content=prompt)]
    return [
        m if isinstance(m, common_pb2.ChatMessage) else common_pb2.ChatMessage(role=m[0], content=m[1])
        for m in prompt
    ]


def _request(
    prompt: Messages, caller: str, request_id: str, options: dict[str, Any]
) -> router_pb2.RouteRequest:
    return router_pb2.RouteRequest(
        messages=_messages(prompt),
        caller=caller,
        request_id=request_id or uuid.uuid4().hex,
        options=router_pb2.RouteOptions(**options),
    )


def _stream_request(
    prompt: Messages, caller: str, request_id: str, options: dict[str, Any]
) -> router_pb2.RouteStreamRequest:
    base = _request(prompt, caller, request_id, options)
    return router_pb2.RouteStreamRequest(
        messages=base.messages, caller=base.caller, request_id=base.request_id, options=base.options
    )


class _Settings:
    def __init__(
        self, address: str | None, api_key: str | None, ca_file: str | None, timeout: float, retries: int
    ) -> None:
        self.address = address or from_environment("LLMROUTE_ADDRESS") or DEFAULT_ADDRESS
        self.api_key = api_key if api_key is not None else from_environment("LLMROUTE_API_KEY")
        ca = ca_file or from_environment("LLMROUTE_CA_FILE")
        self.credentials = grpc.ssl_channel_credentials(Path(ca).read_bytes()) if ca else None
        self.timeout = timeout
        self.retries = retries

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.api_key}"),) if self.api_key else ()

    def backoff(self, attempt: int) -> float:
        """Exponential with full jitter: 0.1 s, 0.2 s, 0.4 s... at most 2 s."""
        return random.uniform(0, min(2.0, 0.1 * 2**attempt))


class AsyncClient:
    """The router over gRPC (asyncio). Use as `async with AsyncClient() as client:`."""

    def __init__(
        self,
        address: str | None = None,
        *,
        api_key: str | None = None,
        ca_file: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
    ) -> None:
        self._settings = _Settings(address, api_key, ca_file, timeout, retries)
        s = self._settings
        self._channel = (
            grpc.aio.secure_channel(s.address, s.credentials)
            if s.credentials
            else grpc.aio.insecure_channel(s.address)
        )
        self._stub = router_pb2_grpc.RouterServiceStub(self._channel)

    async def route(
        self,
        prompt: Messages,
        *,
        caller: str = "",
        request_id: str = "",
        timeout: float | None = None,
        **options: Any,
    ) -> router_pb2.RouteResponse:
        """Route one conversation; `options` are RouteOptions fields (max_output_tokens, force_tier...)."""
        request = _request(prompt, caller, request_id, options)
        s = self._settings
        for attempt in range(s.retries + 1):
            try:
                return await self._stub.Route(request, timeout=timeout or s.timeout, metadata=s.metadata())
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE or attempt == s.retries:
                    raise from_rpc_error(error) from None
            await asyncio.sleep(s.backoff(attempt))  # then the same request id: replayed if it ran
        raise AssertionError("unreachable")

    async def stream(
        self,
        prompt: Messages,
        *,
        caller: str = "",
        request_id: str = "",
        timeout: float | None = None,
        **options: Any,
    ) -> AsyncIterator[str]:
        """The answer's text as it arrives. A stream is not retried once text has arrived."""
        request = _stream_request(prompt, caller, request_id, options)
        s = self._settings
        for attempt in range(s.retries + 1):
            sent = False
            try:
                async for event in self._stub.RouteStream(
                    request, timeout=timeout or s.timeout, metadata=s.metadata()
                ):
                    if event.HasField("delta") and event.delta.content:
                        sent = True
                        yield event.delta.content
                return
            except grpc.aio.AioRpcError as error:
                if sent or error.code() != grpc.StatusCode.UNAVAILABLE or attempt == s.retries:
                    raise from_rpc_error(error) from None
            await asyncio.sleep(s.backoff(attempt))

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.close()


class Client:
    """The router over gRPC (blocking). Use as `with Client() as client:`."""

    def __init__(
        self,
        address: str | None = None,
        *,
        api_key: str | None = None,
        ca_file: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
    ) -> None:
        self._settings = _Settings(address, api_key, ca_file, timeout, retries)
        s = self._settings
        self._channel = (
            grpc.secure_channel(s.address, s.credentials)
            if s.credentials
            else grpc.insecure_channel(s.address)
        )
        self._stub = router_pb2_grpc.RouterServiceStub(self._channel)

    def route(
        self,
        prompt: Messages,
        *,
        caller: str = "",
        request_id: str = "",
        timeout: float | None = None,
        **options: Any,
    ) -> router_pb2.RouteResponse:
        request = _request(prompt, caller, request_id, options)
        s = self._settings
        for attempt in range(s.retries + 1):
            try:
                reply: router_pb2.RouteResponse = self._stub.Route(
                    request, timeout=timeout or s.timeout, metadata=s.metadata()
                )
                return reply
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE or attempt == s.retries:
                    raise from_rpc_error(error) from None
            time.sleep(s.backoff(attempt))
        raise AssertionError("unreachable")

    def stream(
        self,
        prompt: Messages,
        *,
        caller: str = "",
        request_id: str = "",
        timeout: float | None = None,
        **options: Any,
    ) -> Iterator[str]:
        request = _stream_request(prompt, caller, request_id, options)
        s = self._settings
        for attempt in range(s.retries + 1):
            sent = False
            try:
                for event in self._stub.RouteStream(
                    request, timeout=timeout or s.timeout, metadata=s.metadata()
                ):
                    if event.HasField("delta") and event.delta.content:
                        sent = True
                        yield event.delta.content
                return
            except grpc.RpcError as error:
                unavailable = error.code() == grpc.StatusCode.UNAVAILABLE
                if sent or not unavailable or attempt == s.retries:
                    raise from_rpc_error(error) from None
            time.sleep(s.backoff(attempt))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


def route(prompt: Messages, **kwargs: Any) -> router_pb2.RouteResponse:
    """Route one prompt with a client built from the environment: `route("...").content`."""
    with Client() as client:
        return client.route(prompt, **kwargs)
