"""A known gap, measured: gRPC calls that never send their message hold the server's call
slots, and every other gRPC client is refused meanwhile.

    python -m bench.grpc_idle_streams [--channels 4] [--calls 70] [--seconds 40]
    python -m bench.grpc_idle_streams --trickle [--channels 4] [--megabytes 4]

Starts `python -m app` (one process per core, gRPC on) on 127.0.0.1, opens `--channels`
connections each carrying `--calls` ModelInfer calls that send their headers and then
nothing, and every 2 s sends 20 ordinary ModelInfer calls on a fresh connection, printing
how they were answered. Each server process admits at most 64 calls at once
(app/protocols/oip_grpc.py), counted from a call's headers, not its message; a connection
is closed gracefully after 3 s, and its calls cut 30 s later.

Counting calls from their message instead would let in calls that send part of theirs:
grpc buffers a message as it arrives, up to the message limit (10 MB), before the service
sees it. `--trickle` measures that: one server process, `--channels` connections of 16
calls, each declaring a 10 MB message and sending `--megabytes` of it; it prints the
server's resident memory before and after. The fix this gap needs is a bound on those
bytes (as DIGITS_MAX_BUFFERED_BODY_BYTES is for HTTP), which grpc's Python server does
not offer.
"""

from __future__ import annotations

import argparse
import select
import socket
import struct
import sys
import threading
import time

import grpc
import numpy as np

from app.protocols.proto import inference_pb2 as pb
from bench.run import MODEL, WORKERS, free_port, rss_mb, server

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


TRICKLED_CALLS = 16


def trickle(connections: int, sent: int) -> None:
    """The server's resident memory before and after `connections` x TRICKLED_CALLS calls
    each send `sent` bytes of a 10 MB message (and never the rest)."""
    import h2.config
    import h2.connection
    import h2.exceptions

    grpc_port = free_port()
    command = [sys.executable, "-m", "app", "--port", "{port}", "--workers", "1"]
    env = {"DIGITS_LOG_LEVEL": "warning", "DIGITS_GRPC_PORT": str(grpc_port)}
    with server(command, "/readyz", env=env) as (_, process, _):
        before = rss_mb(process.pid)
        senders = []
        for _ in range(connections):
            sock = socket.create_connection(("127.0.0.1", grpc_port))
            link = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            link.initiate_connection()
            unsent = {}
            for _ in range(TRICKLED_CALLS):
                stream = link.get_next_available_stream_id()
                link.send_headers(stream, [
                    (":method", "POST"), (":scheme", "http"), (":path", METHOD),
                    (":authority", "digits"), ("content-type", "application/grpc"),
                    ("te", "trailers")])
                # gRPC's frame: not compressed, then the message's length.
                unsent[stream] = b"\x00" + struct.pack(">I", 10_000_000) + bytes(sent)
            sock.sendall(link.data_to_send())
            senders.append((sock, link, unsent))
        # Send as fast as the server's flow control lets in, for 2.5 s (it closes each
        # connection gracefully after 3 s).
        deadline, refused = time.monotonic() + 2.5, 0
        while time.monotonic() < deadline and any(unsent for _, _, unsent in senders):
            for sock, link, unsent in senders:
                if select.select([sock], [], [], 0.01)[0]:
                    try:
                        link.receive_data(sock.recv(1 << 20))
                    except h2.exceptions.ProtocolError:  # the server's goodbye
                        unsent.clear()
                for stream, rest in list(unsent.items()):
                    try:
                        window = min(link.local_flow_control_window(stream),
                                     link.max_outbound_frame_size, len(rest))
                        if window > 0:
                            link.send_data(stream, rest[:window])
                            unsent[stream] = rest[window:]
                    except h2.exceptions.StreamClosedError:  # refused by the server
                        unsent[stream] = b""
                        refused += 1
                    if not unsent[stream]:
                        del unsent[stream]
                sock.sendall(link.data_to_send())
        after = rss_mb(process.pid)
        calls = connections * TRICKLED_CALLS
        print(f"{calls} calls sending {sent / 1e6:g} MB each, {refused} refused at their "
              f"headers: server resident memory {before:.0f} -> {after:.0f} MB")
        for sock, _, _ in senders:
            sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.grpc_idle_streams",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--calls", type=int, default=70)
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--trickle", action="store_true")
    parser.add_argument("--megabytes", type=float, default=4)
    args = parser.parse_args()
    if args.trickle:
        trickle(args.channels, int(args.megabytes * 1e6))
        return
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
