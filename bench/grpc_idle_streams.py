"""A known gap, measured: gRPC calls that never send their message hold the server's call
slots, and every other gRPC client is refused meanwhile.

    python -m bench.grpc_idle_streams [--channels 4] [--calls 70] [--seconds 40]

Starts `python -m app` (one process per core, gRPC on) on 127.0.0.1, opens `--channels`
connections each carrying `--calls` ModelInfer calls that send their headers and then
nothing, and every 2 s sends 20 ordinary ModelInfer calls on a fresh connection, printing
how they were answered. Each server process admits at most 64 calls at once
(app/protocols/oip_grpc.py), counted from a call's headers, not its message; a connection
is closed gracefully after 3 s, and its calls cut 30 s later. The fix this measures the need
for: a deadline for a call's message, or call slots that only a message holds.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

import grpc
import numpy as np

from app.protocols.proto import inference_pb2 as pb
from bench.run import MODEL, WORKERS, free_port, server

METHOD = "/inference.GRPCInferenceService/ModelInfer"


def ordinary_calls(target: str, count: int = 20) -> dict[str, int]:
    """`count` valid single-digit ModelInfer calls on a fresh connection: their status codes."""
    request = pb.ModelInferRequest(
        model_name=MODEL, inputs=[pb.ModelInferRequest.InferInputTensor(
            name="image", datatype="FP32", shape=[1, 28, 28, 1])],
        raw_input_contents=[np.zeros(784, np.float32).tobytes()])
    codes: dict[str, int] = {}
    with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        infer = channel.unary_unary(
            METHOD, request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString)
        for _ in range(count):
            try:
                infer(request, timeout=2)
                code = "OK"
            except grpc.RpcError as error:
                code = error.code().name
            codes[code] = codes.get(code, 0) + 1
    return codes


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.grpc_idle_streams",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--calls", type=int, default=70)
    parser.add_argument("--seconds", type=float, default=40)
    args = parser.parse_args()
    grpc_port = free_port()
    target = f"127.0.0.1:{grpc_port}"
    command = [sys.executable, "-m", "app", "--port", "{port}", "--workers", str(WORKERS)]
    env = {"DIGITS_LOG_LEVEL": "warning", "DIGITS_GRPC_PORT": str(grpc_port)}
    with server(command, "/readyz", env=env, processes=WORKERS):
        print(f"before: {ordinary_calls(target)}", flush=True)
        release = threading.Event()

        def nothing():  # a request stream that never yields a message
            release.wait()
            yield from ()

        channels, idle = [], []
        for _ in range(args.channels):
            channel = grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
            channels.append(channel)
            send_headers_only = channel.stream_unary(METHOD)
            idle += [send_headers_only.future(nothing()) for _ in range(args.calls)]
        time.sleep(1)
        started = time.monotonic()
        while time.monotonic() - started < args.seconds:
            print(f"t = {time.monotonic() - started:4.0f} s: {ordinary_calls(target)}", flush=True)
            time.sleep(2)
        print(f"idle calls ended by the server: {sum(call.done() for call in idle)} of {len(idle)}")
        release.set()
        for channel in channels:
            channel.close()


if __name__ == "__main__":
    main()
