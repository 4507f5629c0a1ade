"""The gateway over TLS: HTTPS on its own port, and mutual TLS to a router that requires client
certificates (certificates made at test time, as in tests/test_tls.py)."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gateway.settings import GatewaySettings
from llmroute.router.v1 import router_pb2_grpc
from service_kit import tls
from tests.gateway.conftest import ScriptedUpstream, serve_gateway
from tests.test_tls import Authority

BODY = {"model": "llmroute/auto", "messages": [{"role": "user", "content": "Is this spam?"}]}


@pytest.fixture
async def mutual_tls_router(tmp_path: Path) -> AsyncIterator[tuple[Authority, int]]:
    """A scripted router whose port speaks TLS only and requires a certificate the CA signed."""
    ca = Authority(tmp_path, "llmroute-test-ca")
    served = ca.issue("router", server=True)
    server = grpc.aio.server()
    upstream = ScriptedUpstream()  # type: ignore[abstract]  # as in conftest: the rest is UNIMPLEMENTED
    router_pb2_grpc.add_RouterServiceServicer_to_server(upstream, server)
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    credentials = tls.server_credentials(served.cert, served.key, ca.pair.cert)
    assert credentials is not None
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    await checker.set("", health_pb2.HealthCheckResponse.SERVING)
    try:
        yield ca, port
    finally:
        await server.stop(None)


async def test_https_in_front_and_mutual_tls_behind(mutual_tls_router: tuple[Authority, int]) -> None:
    ca, port = mutual_tls_router
    own = ca.issue("gateway", server=True)  # serves HTTPS and identifies the gateway to the router
    settings = GatewaySettings(
        port=0,
        router_address=f"127.0.0.1:{port}",
        peer_ca_file=ca.pair.cert,
        tls_cert_file=own.cert,
        tls_key_file=own.key,
    )
    async with serve_gateway(settings) as url:
        https = url.replace("http://", "https://")
        trust = ssl.create_default_context(cafile=str(ca.pair.cert))
        async with httpx.AsyncClient(base_url=https, verify=trust) as client:
            assert (await client.get("/readyz")).json() == {"status": "ready", "router": "SERVING"}
            reply = await client.post("/v1/chat/completions", json=BODY)
            assert reply.status_code == 200 and reply.json()["model"] == "gpt-5-nano"
        async with httpx.AsyncClient(base_url=url) as plaintext:
            with pytest.raises(httpx.HTTPError):
                await plaintext.get("/healthz")


async def test_without_its_certificate_the_router_refuses_it(
    mutual_tls_router: tuple[Authority, int],
) -> None:
    ca, port = mutual_tls_router
    settings = GatewaySettings(port=0, router_address=f"127.0.0.1:{port}", peer_ca_file=ca.pair.cert)
    async with serve_gateway(settings) as url, httpx.AsyncClient(base_url=url) as client:
        reply = await client.post("/v1/chat/completions", json=BODY)
        assert reply.status_code == 503
        assert reply.json()["error"]["llmroute"]["grpc_code"] == "UNAVAILABLE"
        assert (await client.get("/readyz")).status_code == 503


def test_half_a_tls_configuration_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="TLS_KEY_FILE"):
        GatewaySettings(tls_cert_file=tmp_path / "gateway.crt")
