"""Asks classifier_svc for a verdict; the router degrades to a default tier when it cannot answer."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from llmroute.classifier.v1 import classifier_pb2, classifier_pb2_grpc
from llmroute.common.v1 import common_pb2
from service_kit import metadata


class ClassifierClient:
    def __init__(self, address: str) -> None:
        self._channel = grpc.aio.insecure_channel(address)
        self._stub = classifier_pb2_grpc.ClassifierServiceStub(self._channel)

    async def classify(
        self, messages: Sequence[common_pb2.ChatMessage], request_id: str, timeout: float
    ) -> classifier_pb2.ClassifyResponse:
        """Raises grpc.aio.AioRpcError when the classifier fails or does not answer within `timeout`."""
        return await self._stub.Classify(
            classifier_pb2.ClassifyRequest(messages=messages),
            timeout=timeout,
            metadata=((metadata.REQUEST_ID, request_id),),
        )

    async def close(self) -> None:
        await self._channel.close()
