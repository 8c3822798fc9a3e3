"""Hostile gRPC clients, against `python -m app` with gRPC on (one server process):
connections past the cap are closed, and the clients already connected go on; connections
that never finish opening are closed after the header timeout; a client resetting streams
as fast as it can opens them ("rapid reset") costs no other client its calls."""

from __future__ import annotations

import socket
import struct
import threading
import time

import numpy as np
import pytest

from tests.conftest import REPO_ROOT
from tests.servers import free_port, start_server

grpc = pytest.importorskip("grpc")
# tritonclient's copy of the protocol's messages: the app's own cannot share a process with
# it (one protobuf registry), and the other protocol tests use tritonclient.
pb = pytest.importorskip("tritonclient.grpc.service_pb2")

INFER = "/inference.GRPCInferenceService/ModelInfer"
CONNECTIONS = 8
HEADER_TIMEOUT_S = 1
# What a client sends first: HTTP/2's preface and its (empty) settings.
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


@pytest.fixture(scope="module")
def target():
    port = free_port()
    server, _ = start_server(REPO_ROOT / "models", access_log="false", grpc_port=port,
                             max_connections=CONNECTIONS, header_timeout_s=HEADER_TIMEOUT_S)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


def channel(target: str) -> grpc.Channel:
    """A channel with a connection of its own (grpc shares them between channels by default)."""
    return grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])


REQUEST = pb.ModelInferRequest(
    model_name="sequential", inputs=[pb.ModelInferRequest.InferInputTensor(
        name="image", datatype="FP32", shape=[1, 28, 28, 1])],
    raw_input_contents=[np.zeros(784, np.float32).tobytes()])


def infer(target: str) -> str:
    """One valid ModelInfer call on a fresh connection: its status code's name."""
    with channel(target) as fresh:
        call = fresh.unary_unary(
            INFER, request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString)
        try:
            call(REQUEST, timeout=10)
        except grpc.RpcError as error:
            return error.code().name
    return "OK"


def is_live(on: grpc.Channel) -> bool:
    live = on.unary_unary("/inference.GRPCInferenceService/ServerLive",
                          request_serializer=pb.ServerLiveRequest.SerializeToString,
                          response_deserializer=pb.ServerLiveResponse.FromString)
    return live(pb.ServerLiveRequest(), timeout=10).live


def test_connections_past_the_cap_are_closed_and_the_others_served(target):
    # (The server ends each connection 3 s after it opens; this takes well under that.)
    connected = [channel(target) for _ in range(CONNECTIONS)]
    try:
        assert all(is_live(each) for each in connected)
        assert infer(target) == "UNAVAILABLE"  # one connection too many
        assert is_live(connected[0])  # an open one goes on
    finally:
        connected.pop().close()
    # One closed: there is room for one again (once the server has seen it close).
    deadline = time.monotonic() + 10
    while (answer := infer(target)) != "OK" and time.monotonic() < deadline:
        time.sleep(0.1)
    for each in connected:
        each.close()
    assert answer == "OK"


@pytest.mark.parametrize("opening", [b"", PREFACE], ids=["silent", "preface only"])
def test_connections_that_never_finish_opening_are_closed(target, opening):
    # By grpc's defaults such a socket held its place for 23 s: a few hundred of them,
    # renewed, kept every other gRPC client out.
    host, port = target.split(":")
    with socket.create_connection((host, int(port))) as silent:
        silent.sendall(opening)
        silent.settimeout(5 * HEADER_TIMEOUT_S + 5)
        try:
            while silent.recv(65536):  # the server's settings, then its goodbye
                pass
        except ConnectionResetError:  # closed too, less politely
            pass
    assert infer(target) == "OK"


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    """An HTTP/2 frame: 24-bit length, type, flags, stream id."""
    return (struct.pack(">I", len(payload))[1:] + bytes([kind, flags])
            + struct.pack(">I", stream) + payload)


def literal(name: str, value: str) -> bytes:
    """An HPACK header field, literal and not indexed (short names and values only)."""
    return b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


CALL_HEADERS = b"".join(literal(name, value) for name, value in [
    (":method", "POST"), (":scheme", "http"), (":path", INFER), (":authority", "digits"),
    ("content-type", "application/grpc"), ("te", "trailers")])
HEADERS, RST_STREAM, END_HEADERS, CANCEL = 1, 3, 4, struct.pack(">I", 8)


def test_a_rapid_reset_flood_costs_no_other_client_its_calls(target):
    host, port = target.split(":")
    stop = threading.Event()

    def flood():
        with socket.create_connection((host, int(port))) as attacker:
            attacker.sendall(PREFACE)
            stream = 1
            while not stop.is_set():
                burst = []
                for _ in range(100):  # open a call and cancel it at once
                    burst += [frame(HEADERS, END_HEADERS, stream, CALL_HEADERS),
                              frame(RST_STREAM, 0, stream, CANCEL)]
                    stream += 2
                try:
                    attacker.sendall(b"".join(burst))
                except OSError:  # closed by the server: the attack ends
                    return

    attack = threading.Thread(target=flood)
    attack.start()
    try:
        time.sleep(0.5)
        answers = [infer(target) for _ in range(20)]
    finally:
        stop.set()
        attack.join()
    assert answers == ["OK"] * 20
