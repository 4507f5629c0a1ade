"""TLS on the services' ports and mutual TLS between them, with certificates made here (`cryptography`).

A ledger and a classifier that require client certificates; a router that serves TLS and reaches
them with its own certificate; clients without a certificate, or with one from another CA, cannot
connect at all."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from classifier_svc.server import create_server as create_classifier
from classifier_svc.settings import ClassifierSettings
from ledger_client import LedgerReporter
from ledger_svc.settings import LedgerSettings
from llmroute.common.v1 import common_pb2
from llmroute.ledger.v1 import ledger_pb2 as L
from llmroute.ledger.v1 import ledger_pb2_grpc
from llmroute.router.v1 import router_pb2, router_pb2_grpc
from router_svc.server import create_server as create_router
from service_kit import healthcheck, tls
from tests.ledger.conftest import start_ledger, stop_ledger
from tests.router.conftest import router_settings


def credentials(ca: Path, cert: Path | None = None, key: Path | None = None) -> grpc.ChannelCredentials:
    """tls.channel_credentials, which a CA always makes credentials of."""
    made = tls.channel_credentials(ca, cert, key)
    assert made is not None
    return made


@dataclass
class Pair:
    cert: Path
    key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write(directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Pair:
    pair = Pair(directory / f"{stem}.crt", directory / f"{stem}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return pair


class Authority:
    """A CA that signs certificates for 127.0.0.1 (servers) and for clients."""

    def __init__(self, directory: Path, common: str) -> None:
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common))
            .issuer_name(_name(common))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.pair = _write(directory, common, self.cert, self.key)

    def issue(self, common: str, server: bool) -> Pair:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        # A service's certificate serves its port and identifies it to its peers: both usages.
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        if server:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return _write(self.directory, common, builder.sign(self.key, hashes.SHA256()), key)


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, object]:
    ca = Authority(tmp_path, "llmroute-test-ca")
    rogue = Authority(tmp_path, "rogue-ca")
    return {
        "ca": ca,
        "server": ca.issue("services", server=True),
        "router": ca.issue("router", server=False),
        "rogue": rogue.issue("rogue-client", server=False),
    }


def both(pair: Pair) -> tuple[Path, Path]:
    return pair.cert, pair.key


async def test_mutual_tls_admits_only_clients_the_ca_signed(tmp_path: Path, pki: dict[str, Any]) -> None:
    ca, server, router, rogue = pki["ca"], pki["server"], pki["router"], pki["rogue"]
    ledger = await start_ledger(
        LedgerSettings(
            port=0,
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'l.db'}",
            tls_cert_file=server.cert,
            tls_key_file=server.key,
            tls_client_ca_file=ca.pair.cert,
        )
    )
    address = f"127.0.0.1:{ledger.running.port}"

    async def stats(channel: grpc.aio.Channel, timeout: float = 1.0) -> grpc.StatusCode:
        try:
            await ledger_pb2_grpc.LedgerServiceStub(channel).GetStats(L.GetStatsRequest(), timeout=timeout)
            return grpc.StatusCode.OK
        except grpc.aio.AioRpcError as error:
            return error.code()
        finally:
            await channel.close()

    try:
        assert await stats(grpc.aio.insecure_channel(address)) == grpc.StatusCode.UNAVAILABLE
        no_cert = credentials(ca.pair.cert)
        assert await stats(grpc.aio.secure_channel(address, no_cert)) == grpc.StatusCode.UNAVAILABLE
        wrong = credentials(ca.pair.cert, *both(rogue))
        assert await stats(grpc.aio.secure_channel(address, wrong)) == grpc.StatusCode.UNAVAILABLE
        signed = credentials(ca.pair.cert, *both(router))
        assert await stats(grpc.aio.secure_channel(address, signed), timeout=10) == grpc.StatusCode.OK
        # The container health check speaks TLS too (a Kubernetes gRPC probe cannot).
        probe = ["--ca", str(ca.pair.cert), "--cert", str(router.cert), "--key", str(router.key)]
        assert await asyncio.to_thread(healthcheck.main, [address, *probe]) == 0
        assert await asyncio.to_thread(healthcheck.main, [address]) == 1
    finally:
        await stop_ledger(ledger)


async def test_a_route_over_tls_reaches_ledger_and_classifier_over_mutual_tls(
    tmp_path: Path, pki: dict[str, Any], simulator_url: str
) -> None:
    ca, server, router_pair = pki["ca"], pki["server"], pki["router"]
    mutual = {"tls_cert_file": server.cert, "tls_key_file": server.key, "tls_client_ca_file": ca.pair.cert}
    ledger = await start_ledger(
        LedgerSettings(port=0, database_url=f"sqlite+aiosqlite:///{tmp_path / 'l.db'}", **mutual)
    )
    classifier = await create_classifier(
        ClassifierSettings(port=0, strategy="heuristic", cache_enabled=False, **mutual)
    )
    ledger_address = f"127.0.0.1:{ledger.running.port}"
    peer = credentials(ca.pair.cert, *both(router_pair))
    reporter = LedgerReporter(ledger_address, tmp_path / "spool.db", flush_interval=0.01, credentials=peer)
    settings = router_settings(
        f"127.0.0.1:{classifier.port}",
        simulator_url,
        tmp_path,
        ledger_address=ledger_address,
        budgets_enabled=True,
        peer_ca_file=ca.pair.cert,
        # The router's certificate serves its own port and identifies it to its peers.
        tls_cert_file=server.cert,
        tls_key_file=server.key,
    )
    # Its peers want a client certificate: the router presents its own.
    router = await create_router(settings, usage_sink=reporter)
    channel = grpc.aio.secure_channel(f"127.0.0.1:{router.port}", credentials(ca.pair.cert))
    try:
        reply = await router_pb2_grpc.RouterServiceStub(channel).Route(
            router_pb2.RouteRequest(
                messages=[common_pb2.ChatMessage(role="user", content="Is this spam? 'free cruise'")],
                caller="tls-team",
            ),
            timeout=20,
        )
        assert reply.content and reply.decision.source  # classified remotely over mutual TLS
        assert "budget_unavailable" not in " ".join(reply.warnings)  # the budget check got through
        assert await reporter.flush(10)
        admin = grpc.aio.secure_channel(ledger_address, peer)
        stats = await ledger_pb2_grpc.LedgerServiceStub(admin).GetStats(L.GetStatsRequest(caller="tls-team"))
        await admin.close()
        assert stats.totals.requests == 1
    finally:
        await channel.close()
        await router.stop(0)
        await classifier.stop(0)
        await stop_ledger(ledger)


def test_half_a_tls_configuration_is_refused(tmp_path: Path, pki: dict[str, Any]) -> None:
    server = pki["server"]
    with pytest.raises(ValueError, match="both a certificate file and a key file"):
        tls.server_credentials(server.cert, None)
    with pytest.raises(ValueError, match="client CA"):
        tls.server_credentials(None, None, server.cert)
