"""Open Inference Protocol v2 over gRPC (`inference.GRPCInferenceService`), on
`DIGITS_GRPC_PORT`: what Triton's and KServe's gRPC clients speak.

One `grpc.aio` server per server process, on the event loop that owns the batch queues, so
a gRPC request joins the same queues as every other (`app.protocols.models`). Inputs come
in `raw_input_contents` (tritonclient always sends them so) or typed `contents`; outputs
go out in `raw_output_contents`, which is all tritonclient reads. Errors are gRPC status
codes with the same messages as over REST.
"""

from __future__ import annotations

import logging
import time

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from app.protocols.models import (
    ERRORS,
    IMAGE_INPUT,
    TENSOR_INPUT,
    classify_images,
    model_config,
    model_input,
    resolve,
    status_of,
)
from app.protocols.proto import inference_pb2 as pb
from app.protocols.proto import inference_pb2_grpc as pb_grpc
from app.protocols.tensors import (
    BYTES,
    FP32,
    MAX_DIMENSIONS,
    OUTPUT_NAME,
    InputTensor,
    ProtocolError,
    check_shape,
    check_tensor_count,
    read_raw,
)
from app.protocols.wire import fields_in
from digit_contract import INPUT_SHAPE

logger = logging.getLogger("digits.grpc")

# The REST statuses the engine's errors carry, as gRPC codes.
CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
         408: grpc.StatusCode.DEADLINE_EXCEEDED, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
         415: grpc.StatusCode.INVALID_ARGUMENT, 503: grpc.StatusCode.UNAVAILABLE}


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    """The six calls, answered from the app's current service (its registry snapshot)."""

    def __init__(self, service, settings, metrics, version: str):
        self.service, self.settings, self.metrics = service, settings, metrics
        self.version = version
        # Looked up once: a labelled series looked up per call costs a lock and more.
        self._infer_ok = metrics.grpc_requests.labels("ModelInfer", "OK")
        self._infer_latency = metrics.grpc_latency.labels("ModelInfer")

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=bool(self.service.registry.loaded))

    async def ModelReady(self, request, context):
        try:
            resolve(self.service.registry, request.name, request.version or None)
        except ERRORS:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="digit-service", version=self.version,
                                         extensions=["binary_tensor_data"])

    async def ModelMetadata(self, request, context):
        try:
            served, image = resolve(self.service.registry, request.name,
                                    request.version or None)
        except ERRORS as error:
            await _abort(context, error)
        state = self.service.registry.styles[served.model.style]
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=request.name,
            versions=[request.version] if request.version else [str(v) for v in
                                                                sorted(state.served)],
            platform="ensemble" if image else "tensorflow_savedmodel",
            inputs=[tensor(name=IMAGE_INPUT, datatype=BYTES, shape=[-1]) if image else
                    tensor(name=TENSOR_INPUT, datatype=FP32, shape=[-1, *INPUT_SHAPE])],
            outputs=[tensor(name=OUTPUT_NAME, datatype=FP32, shape=[-1, 10])])

    async def ModelConfig(self, request, context):
        """Triton's model configuration extension, which perf_analyzer needs."""
        try:
            _, image = resolve(self.service.registry, request.name, request.version or None)
        except ERRORS as error:
            await _abort(context, error)
        return config_response(request.name, image, self.settings.max_images_per_request)

    async def ModelInfer(self, request, context):
        started, code = time.perf_counter(), "OK"
        try:
            served, image = resolve(self.service.registry, request.model_name,
                                    request.model_version or None)
            with served:
                limit = self.settings.max_images_per_request
                check_tensor_count(len(request.outputs), "outputs")
                value = model_input(_inputs(request, limit),
                                    tuple(o.name for o in request.outputs), image, limit)
                probabilities = (
                    await classify_images(self.service, served, value, PROTOCOL) if image
                    else await self.service.run_tensor(served, value, PROTOCOL))
        except ERRORS as error:
            code = _code(error).name
            await _abort(context, error)
        except Exception:
            code = "INTERNAL"
            logger.exception("ModelInfer failed")
            await context.abort(grpc.StatusCode.INTERNAL, "Internal error (see the log).")
        finally:
            (self._infer_ok if code == "OK" else
             self.metrics.grpc_requests.labels("ModelInfer", code)).inc()
            self._infer_latency.observe(time.perf_counter() - started)
        response = pb.ModelInferResponse(model_name=request.model_name,
                                         model_version=str(served.model.version),
                                         id=request.id)
        response.outputs.add(name=OUTPUT_NAME, datatype=FP32, shape=list(probabilities.shape))
        response.raw_output_contents.append(
            np.ascontiguousarray(probabilities, dtype="<f4").tobytes())
        return response


PROTOCOL = "oip-grpc"


def config_response(model: str, image: bool, max_batch_size: int) -> pb.ModelConfigResponse:
    """`model_config` as the gRPC message."""
    config = model_config(model, image, max_batch_size)
    return pb.ModelConfigResponse(config=pb.ModelConfig(
        name=config["name"], platform=config["platform"], backend=config["backend"],
        max_batch_size=config["max_batch_size"],
        input=[pb.ModelInput(**tensor) for tensor in config["input"]],
        output=[pb.ModelOutput(**tensor) for tensor in config["output"]]))


def _inputs(request, max_images: int) -> list[InputTensor]:
    """The request's inputs from raw_input_contents (one per input, in order) or from each
    input's typed contents; the two are never mixed. Every count is checked before any
    element is copied out of the message."""
    check_tensor_count(len(request.inputs), "inputs")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise ProtocolError(400, f"{len(raw)} raw_input_contents for {len(request.inputs)} "
                            "inputs: send one per input, or none and typed contents.")
    inputs = []
    for k, item in enumerate(request.inputs):
        # (No more than one dimension too many is copied: check_shape refuses it.)
        name, shape = item.name[:100], list(item.shape[:MAX_DIMENSIONS + 1])
        if raw:
            if item.HasField("contents"):
                raise ProtocolError(400, f"Input '{name}' has typed contents as well as "
                                    "raw_input_contents: send one or the other.")
            inputs.append(read_raw(name, item.datatype, shape, raw[k], max_images))
            continue
        count = check_shape(name, shape, item.datatype, max_images)
        contents = (item.contents.bytes_contents if item.datatype == BYTES
                    else item.contents.fp32_contents)
        if len(contents) != count:
            raise ProtocolError(400, f"Input '{name}': {len(contents):,} elements for shape "
                                f"{shape} (which needs {count:,}).")
        value = (list(contents) if item.datatype == BYTES
                 else np.asarray(contents, dtype=np.float32).reshape(shape))
        inputs.append(InputTensor(name, item.datatype, tuple(shape), value))
    return inputs


def _code(error: Exception) -> grpc.StatusCode:
    return CODES.get(status_of(error)[0], grpc.StatusCode.UNAVAILABLE)


async def _abort(context, error: Exception):
    status, message = status_of(error)
    await context.abort(CODES.get(status, grpc.StatusCode.UNAVAILABLE), message)


SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]


def add_to_server(servicer: InferenceService, server: grpc.aio.Server) -> None:
    """Every call of the service, and ModelInfer alone also as a registered method.

    The generated `add_GRPCInferenceServiceServicer_to_server` registers all seven, and the
    asyncio server then keeps one pending request per registered method (plus one for the
    rest) and waits on all of them again for every call it takes: work that grows with the
    methods, spent on each inference. Registering only the one that carries the load keeps
    core's fast path for it; the probes and metadata are resolved by name, which costs them
    a dictionary lookup.
    """
    handlers = {method.name: grpc.unary_unary_rpc_method_handler(
        _parsing(getattr(servicer, method.name), getattr(pb, method.input_type.name),
                 field_limit(servicer.settings.max_images_per_request)),
        response_serializer=getattr(pb, method.output_type.name).SerializeToString)
        for method in SERVICE.methods}
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
    server.add_registered_method_handlers(SERVICE.full_name,
                                          {"ModelInfer": handlers["ModelInfer"]})


def _parsing(method, message_type, max_fields: int):
    """`method` on the request parsed from its bytes here, so that bytes that are not the
    message get INVALID_ARGUMENT, not the UNKNOWN grpc gives a deserializer's exception,
    and a large message of more than `max_fields` fields RESOURCE_EXHAUSTED unparsed."""
    async def handler(raw: bytes, context):
        try:
            if len(raw) > COUNTED_MESSAGE_BYTES and fields_in(
                    raw, message_type.DESCRIPTOR, max_fields) > max_fields:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    f"The message holds more than {max_fields:,} fields, more "
                                    "than any request needs.")
            request = message_type.FromString(raw)
        except DecodeError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"Not a valid {message_type.DESCRIPTOR.full_name} message.")
        return await method(request, context)

    return handler


# Parsing a message makes an object of each field it holds, nested ones too, and holds the
# interpreter lock throughout: a 10 MB message can hold millions of empty inputs, hundreds
# of MB once parsed. A message over COUNTED_MESSAGE_BYTES has its fields counted from its
# bytes first, and is refused past its field limit: 4,096, or more when a request may hold
# more images (a valid one has a few dozen fields, and one per image sent as typed BYTES
# contents). Smaller ones cannot hold enough to matter.
COUNTED_MESSAGE_BYTES = 64 * 1024


def field_limit(max_images: int) -> int:
    return max(4096, max_images + 1024)


# Calls one connection may have open at once (HTTP/2's SETTINGS_MAX_CONCURRENT_STREAMS; a
# client queues the rest; tritonclient puts 6 on a connection): 100, the least the HTTP/2
# RFC recommends. grpc's default sets none, and then a client opening and resetting
# streams as fast as it can (HTTP/2's "rapid reset") filled the queue of calls waiting for
# the app, and grpc cancelled other clients' calls to make room; with a limit, grpc refuses
# the streams past it itself.
STREAMS_PER_CONNECTION = 100

# How long grpc waits for a new connection's first bytes, for its client to acknowledge
# HTTP/2 settings, and for a ping's answer.
OPENING_TIMEOUTS = ("grpc.server_handshake_timeout_ms", "grpc.http2.settings_timeout",
                    "grpc.http2.ping_timeout_ms")

# The kernel spreads connections, not calls, over the server processes (SO_REUSEPORT), and
# a gRPC client keeps a few connections for all its calls: by bad luck most of them land on
# one process while the other idles. Closing each connection (gracefully: its calls finish)
# after a few seconds makes clients reconnect, and spreads them again.
REBALANCING = [("grpc.max_connection_age_ms", 3000), ("grpc.max_connection_age_grace_ms", 30000)]


async def start_server(service, settings, metrics, version: str) -> grpc.aio.Server:
    """The gRPC server on settings.host:settings.grpc_port, started on the running loop.
    Its message limit is the REST body limit; its socket shares the port with the other
    server processes' (SO_REUSEPORT, grpc's default).

    Connections are bounded as HTTP's are: past DIGITS_MAX_CONNECTIONS a new one is closed
    at once, so a flood of them cannot take the file descriptors that the process's HTTP
    connections need, and one that has not finished opening (HTTP/2's preface and settings)
    or stops answering pings is closed after DIGITS_HEADER_TIMEOUT_S, so that silent
    sockets cannot hold those places for long (20 s or more by grpc's defaults)."""
    limit = settings.max_upload_bytes
    # Each call's message is parsed whole before the service sees it: bound how many can
    # be held at once, as DIGITS_MAX_BUFFERED_BODY_BYTES bounds HTTP bodies (but never
    # below 64 calls, so that 64 clients are served). Calls past it get RESOURCE_EXHAUSTED.
    # They are counted from their headers, not their message: grpc buffers a message as it
    # arrives, however slowly, up to the limit, and only this count bounds the bytes that
    # calls still sending theirs hold (`python -m bench.grpc_idle_streams --trickle`).
    calls = max(64, settings.max_buffered_body_bytes // limit)
    server = grpc.aio.server(maximum_concurrent_rpcs=calls, options=[
        ("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit),
        ("grpc.so_reuseport", 1),
        ("grpc.max_allowed_incoming_connections", settings.max_connections),
        ("grpc.max_concurrent_streams", STREAMS_PER_CONNECTION),
        *[(option, round(settings.header_timeout_s * 1000)) for option in OPENING_TIMEOUTS],
        *REBALANCING])
    add_to_server(InferenceService(service, settings, metrics, version), server)
    server.add_insecure_port(f"{settings.host}:{settings.grpc_port}")
    await server.start()
    logger.info("gRPC (Open Inference Protocol v2) on %s:%d", settings.host,
                settings.grpc_port)
    return server
