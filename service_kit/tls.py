"""TLS on a service's port, and mutual TLS between the services, by configuration.

Server side (every service, `*_TLS_CERT_FILE` + `*_TLS_KEY_FILE`): the port speaks TLS only. With
`*_TLS_CLIENT_CA_FILE` as well, a client must present a certificate that CA signed (mutual TLS): a
peer without one cannot even open a connection, whatever key it holds.
Client side (the router's calls to the ledger and the classifier, `ROUTER_PEER_CA_FILE`): TLS that
trusts that CA, presenting the router's own certificate (its `ROUTER_TLS_CERT_FILE`) for mutual TLS.
Unset, everything is plaintext, as it has always been on loopback.
"""

from __future__ import annotations

from pathlib import Path

import grpc


def server_credentials(
    cert_file: Path | None, key_file: Path | None, client_ca_file: Path | None = None
) -> grpc.ServerCredentials | None:
    """TLS credentials for a server, or None (plaintext). Half a configuration is an error."""
    if cert_file is None and key_file is None:
        if client_ca_file is not None:
            raise ValueError("a client CA (mutual TLS) needs the server's own TLS certificate and key")
        return None
    if cert_file is None or key_file is None:
        raise ValueError("TLS needs both a certificate file and a key file")
    return grpc.ssl_server_credentials(
        [(key_file.read_bytes(), cert_file.read_bytes())],
        root_certificates=client_ca_file.read_bytes() if client_ca_file else None,
        require_client_auth=client_ca_file is not None,
    )


def channel_credentials(
    ca_file: Path | None, cert_file: Path | None = None, key_file: Path | None = None
) -> grpc.ChannelCredentials | None:
    """TLS credentials for calls to a peer that `ca_file` signed, with this side's own certificate
    for mutual TLS when given; None (plaintext) without a CA."""
    if ca_file is None:
        return None
    own = cert_file is not None and key_file is not None
    return grpc.ssl_channel_credentials(
        root_certificates=ca_file.read_bytes(),
        private_key=key_file.read_bytes() if own and key_file else None,
        certificate_chain=cert_file.read_bytes() if own and cert_file else None,
    )
