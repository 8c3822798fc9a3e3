"""Hostile gRPC clients, against `python -m app` with gRPC on (one server process):
connections past the cap are closed, and the clients already connected go on."""

from __future__ import annotations

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


@pytest.fixture(scope="module")
def target():
    port = free_port()
    server, _ = start_server(REPO_ROOT / "models", access_log="false", grpc_port=port,
                             grpc_max_connections=CONNECTIONS)
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
