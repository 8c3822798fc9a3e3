"""What every protocol adapter shares: the model names they serve, how a name and a
version or label resolve against the registry, images through the service, and errors
as `{"error": "..."}` with the service's statuses.

Each style is two models: `<style>` takes FP32 tensors [n, 28, 28, 1] in [0, 1], exactly
the SavedModel's signature, and `<style>_image` takes encoded images (BYTES / DT_STRING),
one per element, through the service's own preprocessing. Both answer FP32 `output_0`
[n, 10], the probabilities.
"""

from __future__ import annotations

import zlib

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app.batching import QueueFull
from app.protocols.tensors import (
    BYTES,
    FP32,
    OUTPUT_NAME,
    InputTensor,
    ProtocolError,
    check_finite,
)
from app.registry import ModelNotFound, ModelRegistry, ServedVersion
from app.uploads import Upload, UploadError
from app.versions import version_number
from digit_contract import INPUT_SHAPE, Style

IMAGE_SUFFIX = "_image"
TENSOR_INPUT, IMAGE_INPUT = "image", "image_bytes"
# Bodies larger than this are parsed, and answers this large encoded, in a thread.
THREAD_BODY_BYTES = 256 * 1024
THREAD_ANSWER_ROWS = 64


def model_names(registry: ModelRegistry) -> list[str]:
    return [name for style in registry.loaded
            for name in (style.value, style.value + IMAGE_SUFFIX)]


def model_config(model: str, image: bool, max_batch_size: int) -> dict:
    """Triton's model configuration (its JSON form): what Triton clients such as
    perf_analyzer read to learn the batch size and tensors. The batch dimension is left
    out of `dims`, as Triton does for a model with max_batch_size > 0."""
    return {
        "name": model, "platform": "ensemble" if image else "tensorflow_savedmodel",
        "backend": "" if image else "tensorflow", "max_batch_size": max_batch_size,
        "input": [{"name": IMAGE_INPUT, "data_type": "TYPE_STRING", "dims": [1]} if image
                  else {"name": TENSOR_INPUT, "data_type": "TYPE_FP32",
                        "dims": list(INPUT_SHAPE)}],
        "output": [{"name": OUTPUT_NAME, "data_type": "TYPE_FP32", "dims": [10]}]}


def resolve(registry: ModelRegistry, model: str, version: str | None = None,
            label: str | None = None) -> tuple[ServedVersion, bool]:
    """The served version a model name and a version string (or label) mean, and whether
    it is the style's image model."""
    image = model.endswith(IMAGE_SUFFIX)
    try:
        style = Style(model.removesuffix(IMAGE_SUFFIX))
    except ValueError:
        names = ", ".join(f"{s.value}, {s.value}{IMAGE_SUFFIX}" for s in Style)
        raise ModelNotFound(f"Unknown model '{model[:100]}'. Models: {names}.",
                            "missing") from None
    number = None if version is None else version_number(version)
    if version is not None and number is None:
        raise ProtocolError(400, f"Version '{version[:100]}' is not a version number.")
    return registry.resolve(style, number, label), image


async def classify_images(service, served: ServedVersion, images: list[bytes],
                          protocol: str) -> np.ndarray:
    """Probabilities of each image; the protocols have no per-element error, so an image
    that cannot be read fails the request, naming it: 413 when it is over a limit, else
    400 (the protocols' "invalid argument"; /predict's 415 for an unknown image format
    means an unsupported Content-Type to these clients)."""
    uploads = [Upload(f"{IMAGE_INPUT}[{k}]", data) for k, data in enumerate(images)]
    try:
        result = await service.classify(served, uploads, protocol)
    except UploadError as error:
        raise _invalid(error) from None
    if result.errors:
        raise _invalid(result.errors[min(result.errors)])
    return result.outputs


def _invalid(error: Exception) -> ProtocolError:
    status = getattr(error, "status_code", 400)
    return ProtocolError(status if status in (408, 413, 503) else 400, str(error))


ERRORS = (ModelNotFound, ProtocolError, UploadError, QueueFull)


def status_of(error: Exception) -> tuple[int, str]:
    """The HTTP status and message of one of the engine's ERRORS (gRPC maps the status)."""
    if isinstance(error, ProtocolError):
        return error.status, error.message
    if isinstance(error, ModelNotFound):
        return (503 if error.status == "failed" else 404), str(error)
    if isinstance(error, QueueFull):
        return 503, str(error)
    return error.status_code, error.detail  # UploadError


def error_response(error: Exception) -> JSONResponse:
    status, message = status_of(error)
    headers = ({"Retry-After": str(error.retry_after_s)} if isinstance(error, QueueFull)
               else {"Connection": "close"} if getattr(error, "close_connection", False)
               else None)
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def off_the_loop_if(large: bool, function, *args):
    """`function(*args)`, in a thread when `large`: parsing or encoding a big body would
    hold the event loop, and a thread hand-off costs more than a small one."""
    return await run_in_threadpool(function, *args) if large else function(*args)


def model_input(inputs: list[InputTensor], outputs: tuple[str, ...], image: bool,
                max_images: int) -> np.ndarray | list[bytes]:
    """The model's one input, checked against its metadata."""
    name, datatype = (IMAGE_INPUT, BYTES) if image else (TENSOR_INPUT, FP32)
    shape = "[n]" if image else f"[n, {', '.join(map(str, INPUT_SHAPE))}]"
    if [t.name for t in inputs] != [name]:
        raise ProtocolError(400, f"The model takes one input, '{name}' ({datatype} {shape}); "
                            f"the request has {[t.name[:50] for t in inputs][:5]}.")
    unknown = [o for o in outputs if o != OUTPUT_NAME]
    if unknown:
        raise ProtocolError(400, f"Unknown output {str(unknown[0])[:50]!r}: the model's only "
                            f"output is '{OUTPUT_NAME}'.")
    tensor = inputs[0]
    expected = 1 if image else 1 + len(INPUT_SHAPE)
    if tensor.datatype != datatype or len(tensor.shape) != expected or (
            not image and tensor.shape[1:] != INPUT_SHAPE):
        raise ProtocolError(400, f"Input '{name}' must be {datatype} {shape}, not "
                            f"{tensor.datatype} {list(tensor.shape)}.")
    count = tensor.shape[0]
    if count == 0:
        raise ProtocolError(400, f"Input '{name}' holds no {'image' if image else 'digit'}.")
    if count > max_images:
        raise ProtocolError(413, f"{count} inputs in one request; at most {max_images} "
                            "(DIGITS_MAX_IMAGES_PER_REQUEST).")
    return tensor.value if image else check_finite(tensor.value, name)


async def decompressed(request: Request, body: bytes, max_bytes: int) -> bytes:
    """The body, inflated when the client compressed it (Content-Encoding gzip or deflate:
    tritonclient's request_compression_algorithm), to at most `max_bytes` like any other
    body."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise ProtocolError(415, f"Content-Encoding {encoding[:20]!r}: only gzip and deflate "
                            "are accepted.")
    return await run_in_threadpool(inflate, body, max_bytes)


def inflate(body: bytes, max_bytes: int) -> bytes:
    inflater = zlib.decompressobj(wbits=47)  # gzip or zlib, told by the header
    try:
        inflated = inflater.decompress(body, max_bytes + 1)
    except zlib.error as error:
        raise ProtocolError(400, f"The compressed body is corrupt: {error}") from None
    if len(inflated) > max_bytes:
        raise ProtocolError(413, f"The body inflates to over {max_bytes:,} bytes "
                            "(DIGITS_MAX_UPLOAD_BYTES).")
    if not inflater.eof:
        raise ProtocolError(400, "The compressed body is truncated.")
    return inflated
