"""Container health check: `python -m service_kit.healthcheck HOST:PORT [--ca F [--cert F --key F]]`
exits 0 only when SERVING. With `--ca`, over TLS (and mutual TLS with `--cert` and `--key`): a
Kubernetes gRPC probe cannot speak TLS, so a service with TLS on is probed with this, as an exec probe."""

import argparse
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2

from service_kit import health_rpc, tls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="healthcheck")
    parser.add_argument("address", nargs="?", default="127.0.0.1:50051")
    parser.add_argument("--ca", type=Path, help="the CA that signed the service's certificate (TLS)")
    parser.add_argument("--cert", type=Path, help="this client's certificate (mutual TLS)")
    parser.add_argument("--key", type=Path, help="this client's key (mutual TLS)")
    parser.add_argument("--server-name", default="", help="the name to check the certificate against")
    args = parser.parse_args(argv)
    credentials = tls.channel_credentials(args.ca, args.cert, args.key)
    options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
    channel = (
        grpc.secure_channel(args.address, credentials, options=options)
        if credentials
        else grpc.insecure_channel(args.address)
    )
    with channel:
        try:
            reply = health_rpc.check(channel)(health_pb2.HealthCheckRequest(), timeout=3)
        except grpc.RpcError as error:
            print(f"unhealthy: {error.code().name}", file=sys.stderr)
            return 1
    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    if not serving:
        print(
            f"unhealthy: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}", file=sys.stderr
        )
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
