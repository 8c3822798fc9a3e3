"""The signatures of a SavedModel, read from its `saved_model.pb` without TensorFlow.

TensorFlow Serving's model metadata is the SavedModel's own `signature_def` map. The CPU
server runs LiteRT and does not even install TensorFlow, so this reads the few protobuf
fields needed straight off the wire format (SavedModel -> MetaGraphDef -> SignatureDef ->
TensorInfo -> TensorShapeProto; field numbers from tensorflow/core/protobuf/*.proto) and
gives them as TensorFlow Serving prints them (`preserving_proto_field_name`, every
primitive field printed, int64 as strings).
"""

from __future__ import annotations

import functools
from pathlib import Path

# tensorflow/core/framework/types.proto
DTYPES = {1: "DT_FLOAT", 2: "DT_DOUBLE", 3: "DT_INT32", 4: "DT_UINT8", 5: "DT_INT16",
          6: "DT_INT8", 7: "DT_STRING", 9: "DT_INT64", 10: "DT_BOOL", 19: "DT_HALF"}


@functools.lru_cache(maxsize=64)
def read_signatures(saved_model_dir: Path, loaded_at: float = 0.0) -> dict:
    """{signature name: SignatureDef as JSON} of the SavedModel's first meta graph, without
    the internal ones (`__saved_model_init_op`). `loaded_at` (when the version was loaded)
    keys the cache too: a version loaded again after its files changed is read again."""
    data = memoryview((saved_model_dir / "saved_model.pb").read_bytes())
    meta_graph = next(value for field, value in _fields(data) if field == 2)
    signatures = {}
    for field, entry in _fields(meta_graph):
        if field == 5:  # map<string, SignatureDef> signature_def
            name, signature = _map_entry(entry)
            if not name.startswith("__"):
                signatures[name] = _signature(signature)
    return signatures


def _signature(data: memoryview) -> dict:
    inputs, outputs, method = {}, {}, ""
    for field, value in _fields(data):
        if field in (1, 2):
            name, info = _map_entry(value)
            (inputs if field == 1 else outputs)[name] = _tensor_info(info)
        elif field == 3:
            method = bytes(value).decode()
    return {"inputs": inputs, "outputs": outputs, "method_name": method}


def _tensor_info(data: memoryview) -> dict:
    info = {"dtype": "DT_INVALID", "tensor_shape": {"dim": [], "unknown_rank": False},
            "name": ""}
    for field, value in _fields(data):
        if field == 1:
            info["name"] = bytes(value).decode()
        elif field == 2:
            info["dtype"] = DTYPES.get(value, f"DT_{value}")
        elif field == 3:
            info["tensor_shape"] = _shape(value)
    return info


def _shape(data: memoryview) -> dict:
    dims, unknown = [], False
    for field, value in _fields(data):
        if field == 2:
            size, name = 0, ""
            for dim_field, dim_value in _fields(value):
                if dim_field == 1:
                    size = dim_value - (1 << 64) if dim_value >= 1 << 63 else dim_value
                elif dim_field == 2:
                    name = bytes(dim_value).decode()
            dims.append({"size": str(size), "name": name})
        elif field == 3:
            unknown = bool(value)
    return {"dim": dims, "unknown_rank": unknown}


def _map_entry(data: memoryview) -> tuple[str, memoryview]:
    key, value = "", memoryview(b"")
    for field, item in _fields(data):
        if field == 1:
            key = bytes(item).decode()
        elif field == 2:
            value = item
    return key, value


def _fields(data: memoryview):
    """(field number, value) of each field of a protobuf message: ints for varints, views
    of the bytes for the rest."""
    offset = 0
    while offset < len(data):
        key, offset = _varint(data, offset)
        wire_type = key & 7
        if wire_type == 0:
            value, offset = _varint(data, offset)
        elif wire_type == 2:
            length, offset = _varint(data, offset)
            value, offset = data[offset: offset + length], offset + length
        elif wire_type in (1, 5):
            size = 8 if wire_type == 1 else 4
            value, offset = data[offset: offset + size], offset + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")
        if offset > len(data):
            raise ValueError("truncated protobuf message")
        yield key >> 3, value


def _varint(data: memoryview, offset: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if offset >= len(data):
            raise ValueError("truncated protobuf varint")
        byte = data[offset]
        offset += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, offset
        shift += 7
