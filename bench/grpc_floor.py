"""`python -m bench.grpc_floor`: what a gRPC call costs the server with nothing behind it.

Each server runs in its own process pinned to CPU 0, with perf_analyzer on CPU 1 sending
one FP32 [1, 28, 28, 1] tensor per ModelInfer call at 32 concurrent requests:

- `aio`: a bare `grpc.aio` server on uvloop whose ModelInfer answers at once (zeros);
- `aio + limit`: the same with `maximum_concurrent_rpcs`, which the service sets;
- `sync`: grpc's thread-pool server (8 threads) answering the same way;
- `service`: `python -m app --workers 1` with gRPC on: the real ModelInfer, batch queue
  and model.

Alternating rounds; prints each server's calls/s and the CPU it spent per call (its
user and system time over the calls perf_analyzer counted), which drifts less than
throughput. What separates the bare servers from the service is the service's own work;
what the bare `aio` server costs is grpc's. Writes bench/results/grpc-floor-<date>.md.

    python -m bench.grpc_floor [--rounds 3] [--seconds 6]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import subprocess
import sys
import time
from concurrent import futures

import grpc
import numpy as np

from app.protocols.oip_grpc import config_response
from app.protocols.proto import inference_pb2 as pb
from app.protocols.proto import inference_pb2_grpc as pb_grpc
from bench import perf_analyzer
from bench.run import MODEL, REPO, free_port, sample_digits, with_server_cpu

SERVERS = {"aio": ["aio"], "aio + limit": ["aio", "limit"], "sync": ["sync"],
           "service": None}
ZEROS = np.zeros((1, 10), "<f4").tobytes()


class BareService(pb_grpc.GRPCInferenceServiceServicer):
    """What perf_analyzer asks for, answered at once; ModelInfer gives zeros."""

    def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="bare", version="0",
                                         extensions=["binary_tensor_data"])

    def ModelMetadata(self, request, context):
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=request.name, versions=["1"], platform="tensorflow_savedmodel",
            inputs=[tensor(name="image", datatype="FP32", shape=[-1, 28, 28, 1])],
            outputs=[tensor(name="output_0", datatype="FP32", shape=[-1, 10])])

    def ModelConfig(self, request, context):
        return config_response(request.name, False, 64)

    def ModelInfer(self, request, context):
        response = pb.ModelInferResponse(model_name=request.model_name, model_version="1",
                                         id=request.id)
        response.outputs.add(name="output_0", datatype="FP32", shape=[1, 10])
        response.raw_output_contents.append(ZEROS)
        return response


class AsyncBareService(pb_grpc.GRPCInferenceServiceServicer):
    """BareService's answers from coroutines, as grpc.aio calls them."""

    def __init__(self):
        self.bare = BareService()

    async def ServerMetadata(self, request, context):
        return self.bare.ServerMetadata(request, context)

    async def ModelMetadata(self, request, context):
        return self.bare.ModelMetadata(request, context)

    async def ModelConfig(self, request, context):
        return self.bare.ModelConfig(request, context)

    async def ModelInfer(self, request, context):
        return self.bare.ModelInfer(request, context)


def serve_bare(port: int, flags: list[str]) -> None:
    """Run a bare server on 127.0.0.1:port until killed."""
    address = f"127.0.0.1:{port}"
    if "sync" in flags:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(BareService(), server)
        server.add_insecure_port(address)
        server.start()
        server.wait_for_termination()
        return

    async def main() -> None:
        server = grpc.aio.server(maximum_concurrent_rpcs=64 if "limit" in flags else None)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(AsyncBareService(), server)
        server.add_insecure_port(address)
        await server.start()
        await server.wait_for_termination()

    import uvloop

    uvloop.run(main())


def start(name: str, port: int) -> subprocess.Popen:
    pinned = ["taskset", "-c", "0", sys.executable]
    if SERVERS[name] is None:
        return subprocess.Popen(
            [*pinned, "-m", "app", "--port", str(free_port()), "--workers", "1"], cwd=REPO,
            env={**os.environ, "DIGITS_LOG_LEVEL": "warning", "DIGITS_GRPC_PORT": str(port)},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return subprocess.Popen([*pinned, "-m", "bench.grpc_floor", "--serve", str(port),
                             *SERVERS[name]], cwd=REPO)


def wait_until_serving(port: int, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while True:
            try:
                stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL), timeout=1)
                return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.grpc_floor", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args, flags = parser.parse_known_args()
    if args.serve:
        serve_bare(args.serve, flags)
        return
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("needs two CPUs: the servers on one, perf_analyzer on the other")
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[1]})
    digits = sample_digits(64)
    ports = {name: free_port() for name in SERVERS}
    with contextlib.ExitStack() as stack:
        for name, port in ports.items():
            process = start(name, port)
            stack.callback(process.wait)
            stack.callback(process.terminate)
            wait_until_serving(port)
            ports[name] = (port, process.pid)
        lines = ["# A gRPC call's cost to the server, with nothing behind it", "",
                 "`python -m bench.grpc_floor`: each server pinned to one core, perf_analyzer "
                 "on the other at c=32 (see the module's docstring).", "",
                 "| round | server | calls/s | server CPU µs per call |", "|---:|---|---:|---:|"]
        print("\n".join(lines), flush=True)
        for round_ in range(1, args.rounds + 1):
            for name, (port, pid) in ports.items():
                measured = with_server_cpu(pid, lambda port=port: perf_analyzer.measure(
                    f"127.0.0.1:{port}", "grpc", MODEL, 32, args.seconds, digits))
                rate, cost = measured["requests_per_s"], measured["server_cpu_us"]
                cost = f"{cost:.0f}" if cost else "(unstable)"
                lines.append(f"| {round_} | {name} | {rate:,.0f} | {cost} |")
                print(lines[-1], flush=True)
    out = REPO / "bench" / "results" / f"grpc-floor-{dt.date.today().isoformat()}.md"
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
