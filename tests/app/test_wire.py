"""Counting a protobuf message's fields from its bytes (app.protocols.wire), checked against
messages built by protobuf itself. The schema is tritonclient's copy of the Open Inference
Protocol's (the app's own cannot share a process with it)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.protocols.wire import fields_in

pb = pytest.importorskip("tritonclient.grpc.service_pb2")
REQUEST = pb.ModelInferRequest.DESCRIPTOR
UNLIMITED = 10**9


def tensor_request(**contents) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="sequential", id="a")
    item = request.inputs.add(name="image", datatype="FP32", shape=[1, 28, 28, 1])
    for field, values in contents.items():
        getattr(item.contents, field).extend(values)
    return request


def test_fields_are_counted_nested_ones_too():
    # model_name, id, inputs, and the input's name, datatype and shape (packed: a field,
    # and its four dimensions)
    assert fields_in(tensor_request().SerializeToString(), REQUEST, UNLIMITED) == 10
    # + contents, and its packed floats
    packed = tensor_request(fp32_contents=[0.5] * 784).SerializeToString()
    assert fields_in(packed, REQUEST, UNLIMITED) == 12
    # + contents, and one field per bytes element
    images = tensor_request(bytes_contents=[b"png"] * 300).SerializeToString()
    assert fields_in(images, REQUEST, UNLIMITED) == 10 + 1 + 300
    request = tensor_request()
    request.raw_input_contents.append(bytes(3136))
    request.parameters["priority"].int64_param = 3  # a map entry: key, value, its int64
    assert fields_in(request.SerializeToString(), REQUEST, UNLIMITED) == 10 + 1 + 4


def test_packed_integers_count_one_field_each_and_packed_floats_one_in_all():
    request = tensor_request(fp32_contents=[0.5] * 10_000, int64_contents=list(range(300)))
    del request.inputs[0].shape[:]
    request.inputs[0].shape.extend([1] * 20)
    # model_name, id, inputs, name, datatype, contents, fp32 (packed: one field); the shape
    # and the int64s: a field and an element each
    assert fields_in(request.SerializeToString(), REQUEST, UNLIMITED) == 7 + 21 + 301


def test_a_group_does_not_stop_the_count():
    # An unknown group (field 99's start and end), which the parser skips, then inputs.
    group = b"\x9b\x06\x9c\x06"
    assert fields_in(group + b"\x2a\x00" * 10, REQUEST, UNLIMITED) == 12
    assert fields_in(group + b"\x2a\x00" * 1_000_000, REQUEST, 4096) == 4097


def test_counting_stops_just_past_the_limit():
    assert fields_in(b"\x2a\x00" * 1_000_000, REQUEST, 4096) == 4097
    nested = tensor_request(bytes_contents=[b""] * 100_000).SerializeToString()
    assert fields_in(nested, REQUEST, 50) == 51
    shape = pb.ModelInferRequest(inputs=[pb.ModelInferRequest.InferInputTensor(
        shape=[1] * 1_000_000)]).SerializeToString()
    assert fields_in(shape, REQUEST, 4096) == 4097


@given(st.binary(max_size=2000))
def test_any_bytes_are_counted_without_error(data):
    assert 0 <= fields_in(data, REQUEST, 100) <= 101


@given(st.lists(st.binary(max_size=40), max_size=50), st.text(max_size=20))
def test_generated_requests_count_what_they_hold(elements, model_name):
    request = tensor_request(bytes_contents=elements)  # contents present, even if empty
    request.model_name = model_name
    expected = 10 + bool(model_name) + len(elements)
    assert fields_in(request.SerializeToString(), REQUEST, UNLIMITED) == expected
