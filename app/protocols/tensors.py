"""Open Inference Protocol v2 tensors on the wire: JSON `data` and the binary tensor data
extension (what `tritonclient` sends by default), read into numpy and written back.

Pure functions of bytes and dicts; the routes (`app.protocols.oip_rest`) call them in a
thread for large bodies. Every problem is a `ProtocolError` with the HTTP status the
protocol gives it (400 for a malformed request, 413 over a limit).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import re
import struct

import numpy as np

from digit_contract import IMAGE_SIZE

BINARY_HEADER = "inference-header-content-length"
OUTPUT_NAME = "output_0"
FP32 = "FP32"
BYTES = "BYTES"


class ProtocolError(Exception):
    """A request the protocol refuses: its HTTP status (gRPC maps it) and what to fix."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclasses.dataclass(frozen=True)
class InputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    value: np.ndarray | list[bytes]  # FP32 etc. as an array of `shape`; BYTES as a list


@dataclasses.dataclass(frozen=True)
class InferRequest:
    id: str | None
    inputs: list[InputTensor]
    binary_output: bool  # answer with a binary tail rather than JSON `data`
    outputs: tuple[str, ...]


def parse_infer_request(body: bytes, header_length: str | None, max_images: int
                        ) -> InferRequest:
    """The request of an `infer` call: JSON, or JSON then a binary tail when the header
    `Inference-Header-Content-Length` gives the JSON's length."""
    tail = b""
    if header_length is not None:
        if not LENGTH.fullmatch(header_length) or int(header_length) > len(body):
            raise ProtocolError(400, f"Inference-Header-Content-Length {header_length[:20]!r} "
                                f"is not a length within the {len(body):,}-byte body.")
        split = int(header_length)
        if split == 0:
            raise ProtocolError(400, "Raw binary requests (Inference-Header-Content-Length "
                                "0) are not supported: send a JSON header before the data.")
        body, tail = body[:split], body[split:]
    document = load_json(body, max_images * PIXELS)
    if not isinstance(document, dict) or not isinstance(document.get("inputs"), list) \
            or not document["inputs"]:
        raise ProtocolError(400, "The request must be a JSON object with a non-empty "
                            "'inputs' list.")
    check_tensor_count(len(document["inputs"]), "inputs")
    reader = _Tail(tail)
    inputs = [_read_input(item, reader, max_images) for item in document["inputs"]]
    if reader.left():
        raise ProtocolError(400, f"{reader.left():,} bytes of binary data follow the inputs "
                            "that no input's binary_data_size accounts for.")
    requested = document.get("outputs") or []
    if not isinstance(requested, list) or not all(isinstance(o, dict) for o in requested):
        raise ProtocolError(400, "'outputs' must be a list of objects with a 'name'.")
    check_tensor_count(len(requested), "outputs")
    binary = _flag(_parameters(document, "request"), "binary_data_output")
    names = []
    for output in requested:
        names.append(output.get("name"))
        if "binary_data" in _parameters(output, "output"):
            binary = _flag(output["parameters"], "binary_data")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError(400, "The request's 'id' must be a string.")
    return InferRequest(id=request_id, inputs=inputs, binary_output=binary,
                        outputs=tuple(names))


LENGTH = re.compile(r"[0-9]{1,12}")
PIXELS = IMAGE_SIZE * IMAGE_SIZE
# The protocol's other datatypes: refused as not what the models take, not as unknown.
OTHER_DATATYPES = {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32",
                   "INT64", "FP16", "FP64", "BF16"}
MAX_DIMENSIONS = 8

# The models take one input and give one output. A request naming more tensors than this is
# refused before any is read: each costs Python objects on the event loop, and a 10 MB gRPC
# message can name hundreds of thousands of empty ones.
MAX_TENSORS = 8


def check_tensor_count(count: int, what: str) -> None:
    if count > MAX_TENSORS:
        raise ProtocolError(400, f"The request names {count:,} {what}; the models take one "
                            f"input and give one output.")


def load_json(body: bytes, max_values: int):
    """JSON, refused with 413 first when it holds more values than any accepted request
    could: a body of "0,0,0,..." would become millions of Python objects, and one of
    "[[[[...]]]]" or "{"a":{"a":...}}" as many lists or dicts with hardly a comma. (A valid
    one has at most about a list per value, nested as the tensor's shape.)"""
    if max(body.count(b","), body.count(b"["), body.count(b"{")) > max_values + 10_000:
        raise ProtocolError(413, f"The request holds more values than the {max_values:,} "
                            "a request may send.")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise ProtocolError(400, f"The request is not valid JSON: {str(error)[:200]}") from None


def _flag(parameters: dict, name: str) -> bool:
    value = parameters.get(name, False)
    if type(value) is not bool:
        raise ProtocolError(400, f"Parameter '{name}' must be true or false.")
    return value


def _parameters(item: dict, what: str) -> dict:
    parameters = item.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ProtocolError(400, f"The {what}'s 'parameters' must be an object.")
    return parameters


class _Tail:
    """The binary tail, handed out in input order."""

    def __init__(self, data: bytes):
        self.data, self.offset = memoryview(data), 0

    def take(self, size: int, name: str) -> memoryview:
        if size > len(self.data) - self.offset:
            raise ProtocolError(400, f"Input '{name}' declares binary_data_size {size:,} but "
                                f"only {len(self.data) - self.offset:,} bytes are left.")
        self.offset += size
        return self.data[self.offset - size: self.offset]

    def left(self) -> int:
        return len(self.data) - self.offset


def _read_input(item, tail: _Tail, max_images: int) -> InputTensor:
    if not isinstance(item, dict):
        raise ProtocolError(400, "Each input must be an object with name, shape, datatype.")
    name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
    if not isinstance(name, str) or not isinstance(datatype, str):
        raise ProtocolError(400, "Each input needs a string 'name' and 'datatype'.")
    name = name[:100]
    count = check_shape(name, shape, datatype, max_images)
    size = _parameters(item, "input").get("binary_data_size")
    if size is not None:
        if type(size) is not int or size < 0:
            raise ProtocolError(400, f"Input '{name}': binary_data_size must be a "
                                "non-negative integer.")
        if "data" in item:
            raise ProtocolError(400, f"Input '{name}' has both 'data' and binary data.")
        return read_raw(name, datatype, shape, tail.take(size, name), max_images)
    if "data" not in item:
        raise ProtocolError(400, f"Input '{name}' has neither 'data' nor binary_data_size.")
    value = (_json_bytes(item["data"], count, name) if datatype == BYTES
             else _json_numbers(item["data"], shape, name))
    return InputTensor(name, datatype, tuple(shape), value)


def check_shape(name: str, shape, datatype: str, max_images: int) -> int:
    """The element count of a valid shape of a datatype the models take, checked before
    anything is read: at most `max_images` images, or their pixels as FP32."""
    if datatype not in (FP32, BYTES):
        raise _unsupported(datatype, name)
    if not isinstance(shape, list) or len(shape) > MAX_DIMENSIONS or not all(
            type(d) is int and d >= 0 for d in shape):
        raise ProtocolError(400, f"Input '{name}': 'shape' must be a list of at most "
                            f"{MAX_DIMENSIONS} non-negative integers.")
    limit = max_images if datatype == BYTES else max_images * PIXELS
    if any(d > limit for d in shape) or math.prod(shape) > limit:
        raise ProtocolError(413, f"Input '{name}' has over {limit:,} elements, the most a "
                            f"request may send ({max_images} images).")
    return math.prod(shape)


def read_raw(name: str, datatype: str, shape: list[int], raw: bytes | memoryview,
             max_images: int) -> InputTensor:
    """An input sent as raw bytes (a REST binary tail, a gRPC raw_input_contents)."""
    count = check_shape(name, shape, datatype, max_images)
    value = (_bytes_elements(memoryview(raw), count, name) if datatype == BYTES
             else _fixed_elements(memoryview(raw), shape, name))
    return InputTensor(name, datatype, tuple(shape), value)


def _fixed_elements(raw: memoryview, shape: list[int], name: str) -> np.ndarray:
    if len(raw) != 4 * math.prod(shape):
        raise ProtocolError(400, f"Input '{name}': {len(raw):,} bytes of FP32 data for shape "
                            f"{shape} (which needs {4 * math.prod(shape):,}).")
    return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)


def check_finite(tensor: np.ndarray, name: str) -> np.ndarray:
    """Refuse NaN and infinities: the model would answer NaN, which JSON cannot carry."""
    if not np.isfinite(tensor).all():
        raise ProtocolError(400, f"Input '{name}' holds NaN or infinite values.")
    return tensor


def float32_numbers(data, problem: str) -> np.ndarray:
    """JSON numbers, nested as a tensor, as float32; anything else (strings such as "0.5",
    true and false, nulls, ragged lists) a 400 that says `problem`.

    The values are looked at as the objects json.loads made (an array of references)
    before anything is converted: an array of strings would be as wide as the longest one
    for every element (a 1 MB body of one long string and a few short ones took 770 MB).
    """
    try:
        values = np.asarray(data, dtype=object)
    except (ValueError, TypeError):
        raise ProtocolError(400, problem) from None
    if not set(map(type, values.ravel())) <= {int, float}:  # bool is a type of its own
        raise ProtocolError(400, problem)
    try:
        with np.errstate(over="ignore"):  # past float32's range: inf, refused by check_finite
            return values.astype(np.float32)
    except OverflowError:  # an integer too large even for float64
        raise ProtocolError(400, problem) from None


def _json_numbers(data, shape: list[int], name: str) -> np.ndarray:
    array = float32_numbers(data, f"Input '{name}': 'data' must be numbers, flat or nested "
                                  "as the shape.")
    if array.size != math.prod(shape):
        raise ProtocolError(400, f"Input '{name}': {array.size:,} values for shape {shape} "
                            f"(which needs {math.prod(shape):,}).")
    return array.reshape(shape)


def _bytes_elements(raw: memoryview, count: int, name: str) -> list[bytes]:
    """BYTES in binary: each element a little-endian uint32 length, then its bytes."""
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ProtocolError(400, f"Input '{name}': BYTES data ends inside a length.")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if length > len(raw) - offset:
            raise ProtocolError(400, f"Input '{name}': a BYTES element claims {length:,} "
                                f"bytes; {len(raw) - offset:,} are left.")
        elements.append(bytes(raw[offset: offset + length]))
        offset += length
        if len(elements) > count:
            break
    if len(elements) != count:
        raise ProtocolError(400, f"Input '{name}': {len(elements)} BYTES elements for a "
                            f"shape of {count} elements.")
    return elements


def _json_bytes(data, count: int, name: str) -> list[bytes]:
    """BYTES in JSON: strings (nested or flat). An image cannot travel as JSON text, so each
    element of an image input is base64 of the image, as the kserve SDK's users send it."""
    flat = list(_flatten(data, name))
    if len(flat) != count:
        raise ProtocolError(400, f"Input '{name}': {len(flat)} BYTES elements for a shape of "
                            f"{count} elements.")
    return [decode_base64(element, f"Input '{name}' element {k}")
            for k, element in enumerate(flat)]


def decode_base64(text: str, label: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(400, f"{label}: not valid base64 (an image travels in JSON as "
                            "the base64 of its file).") from None


def _flatten(data, name: str, depth: int = 0):
    if isinstance(data, str):
        yield data
    elif isinstance(data, list) and depth < 8:
        for element in data:
            yield from _flatten(element, name, depth + 1)
    else:
        raise ProtocolError(400, f"Input '{name}': BYTES 'data' must be strings.")


def _unsupported(datatype: str, name: str) -> ProtocolError:
    known = "a datatype this service does not know" if datatype not in OTHER_DATATYPES else \
        "not what the model takes"
    return ProtocolError(400, f"Input '{name}' is {datatype[:100]}, {known}: send FP32.")


def encode_response(model_name: str, version: int, request: InferRequest,
                    probabilities: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """The infer response body and its headers: FP32 [n, 10] as JSON `data`, or after the
    JSON as a binary tail when the client asked for binary output."""
    probabilities = np.ascontiguousarray(probabilities, dtype="<f4")
    output = {"name": OUTPUT_NAME, "datatype": FP32, "shape": list(probabilities.shape)}
    tail = b""
    if request.binary_output:
        tail = probabilities.tobytes()
        output["parameters"] = {"binary_data_size": len(tail)}
    else:
        output["data"] = probabilities.ravel().tolist()
    document = {"model_name": model_name, "model_version": str(version), "outputs": [output]}
    if request.id is not None:
        document["id"] = request.id
    head = json.dumps(document, separators=(",", ":")).encode()
    if not tail:
        return head, {"content-type": "application/json"}
    return head + tail, {"content-type": "application/octet-stream",
                         BINARY_HEADER: str(len(head))}
