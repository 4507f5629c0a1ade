"""The standard gRPC health service's Check, typed, for a blocking or an asyncio channel.

`health_pb2_grpc.HealthStub(channel).Check` is the same call, but types-grpcio-health-checking declares
`HealthStub` without its methods, so through it the call and its reply would be untyped. These build
the stub's own multicallable from the channel: `check(channel)(HealthCheckRequest(), timeout=3)`."""

from __future__ import annotations

import grpc
import grpc.aio
from grpc_health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

CHECK = "/grpc.health.v1.Health/Check"


def check(channel: grpc.Channel) -> grpc.UnaryUnaryMultiCallable[HealthCheckRequest, HealthCheckResponse]:
    return channel.unary_unary(
        CHECK,
        request_serializer=HealthCheckRequest.SerializeToString,
        response_deserializer=HealthCheckResponse.FromString,
    )


def check_async(
    channel: grpc.aio.Channel,
) -> grpc.aio.UnaryUnaryMultiCallable[HealthCheckRequest, HealthCheckResponse]:
    return channel.unary_unary(
        CHECK,
        request_serializer=HealthCheckRequest.SerializeToString,
        response_deserializer=HealthCheckResponse.FromString,
    )
