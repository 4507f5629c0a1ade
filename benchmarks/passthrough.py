"""The least any Python gRPC router in front of LiteLLM can cost: a RouterService whose Route does one
`litellm.acompletion` to a fixed model and returns the answer. No classification, selection,
validation, accounting, interceptor or logging.

`benchmarks.router_bench` measures it next to the real router: its throughput against the bare loop
is the ceiling for the router's ratio on this machine, and the real router against it is what the
router's own work costs. Run by the benchmark as `python -m benchmarks.passthrough PORT SIMULATOR_URL`.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import grpc

from benchmarks.router_bench import MODEL
from llmroute.router.v1 import router_pb2, router_pb2_grpc
from service_kit.litellm_offline import litellm


class Passthrough(router_pb2_grpc.RouterServiceServicer):
    def __init__(self, simulator_url: str) -> None:
        self._simulator_url = simulator_url

    async def Route(
        self,
        request: router_pb2.RouteRequest,
        context: grpc.aio.ServicerContext[router_pb2.RouteRequest, router_pb2.RouteResponse],
    ) -> router_pb2.RouteResponse:
        response = await litellm.acompletion(
            model=f"openai/{MODEL}",
            api_base=self._simulator_url,
            api_key="simulated",
            messages=[{"role": m.role, "content": m.content} for m in request.messages],
            num_retries=0,
        )
        return router_pb2.RouteResponse(content=response.choices[0].message.content or "", model=MODEL)

    def RouteStream(
        self,
        request: router_pb2.RouteStreamRequest,
        context: grpc.aio.ServicerContext[router_pb2.RouteStreamRequest, router_pb2.RouteStreamResponse],
    ) -> AsyncIterator[router_pb2.RouteStreamResponse]:
        """Not measured: UNIMPLEMENTED, as a servicer that leaves the method out answers."""
        context.set_code(grpc.StatusCode.UNIMPLEMENTED)
        raise NotImplementedError("the passthrough answers Route only")


async def serve(port: int, simulator_url: str) -> None:
    server = grpc.aio.server()
    router_pb2_grpc.add_RouterServiceServicer_to_server(Passthrough(simulator_url), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), sys.argv[2]))
