"""Open Inference Protocol v2 over HTTP (`/v2`): what KServe v2 and Triton clients speak.

Two models per style, as `../shared/docs/protocols.md` recommends: `<style>` takes FP32
`image` tensors `[n, 28, 28, 1]` in [0, 1], exactly the SavedModel's signature, and
`<style>_image` takes BYTES `image_bytes` `[n]`, one encoded image per element, through the
service's own preprocessing. Both answer FP32 `output_0` `[n, 10]`, the probabilities.

A thin adapter: versions, batch queues, limits and hostile-input rules are the service's
own (a tensor request shares model calls with image requests). Errors are
`{"error": "..."}`, as the protocol's clients expect, with the service's statuses.
"""

from __future__ import annotations

import re

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app.batching import QueueFull
from app.protocols.tensors import (
    BINARY_HEADER,
    BYTES,
    FP32,
    OUTPUT_NAME,
    InferRequest,
    ProtocolError,
    encode_response,
    parse_infer_request,
)
from app.registry import ModelNotFound, ServedVersion, StyleState
from app.uploads import Upload, UploadError, read_body
from digit_contract import IMAGE_SIZE, INPUT_SHAPE, Style

router = APIRouter(prefix="/v2", include_in_schema=False)

IMAGE_SUFFIX = "_image"
TENSOR_INPUT, IMAGE_INPUT = "image", "image_bytes"
VERSION = re.compile(r"[0-9]{1,18}")
# Bodies larger than this are parsed and answered in a thread, off the event loop.
THREAD_BODY_BYTES = 256 * 1024
PIXELS = IMAGE_SIZE * IMAGE_SIZE


@router.get("")
async def server_metadata(request: Request) -> dict:
    return {"name": "digit-service", "version": request.app.version,
            "extensions": ["binary_tensor_data"]}


@router.get("/health/live")
async def live() -> dict:
    return {"live": True}


@router.get("/health/ready")
async def ready(request: Request) -> JSONResponse:
    ready = bool(request.state.service.registry.loaded)
    return JSONResponse({"ready": ready}, status_code=200 if ready else 503)


@router.get("/models/{model}")
@router.get("/models/{model}/versions/{version}")
async def model_metadata(request: Request, model: str, version: str | None = None
                         ) -> JSONResponse:
    try:
        served, image = _resolve(request, model, version)
    except (ModelNotFound, ProtocolError) as error:
        return _error(error)
    state: StyleState = request.state.service.registry.styles[served.model.style]
    versions = [version] if version else [str(v) for v in sorted(state.served)]
    return JSONResponse({
        "name": model, "versions": versions,
        "platform": "ensemble" if image else "tensorflow_savedmodel",
        "inputs": [{"name": IMAGE_INPUT, "datatype": BYTES, "shape": [-1]} if image else
                   {"name": TENSOR_INPUT, "datatype": FP32, "shape": [-1, *INPUT_SHAPE]}],
        "outputs": [{"name": OUTPUT_NAME, "datatype": FP32, "shape": [-1, 10]}]})


@router.get("/models/{model}/ready")
@router.get("/models/{model}/versions/{version}/ready")
async def model_ready(request: Request, model: str, version: str | None = None
                      ) -> JSONResponse:
    try:
        _resolve(request, model, version)
    except (ModelNotFound, ProtocolError) as error:
        return _error(error)
    return JSONResponse({"name": model, "ready": True})


@router.post("/models/{model}/infer")
@router.post("/models/{model}/versions/{version}/infer")
async def infer(request: Request, model: str, version: str | None = None) -> Response:
    service, settings = request.state.service, request.state.settings
    try:
        served, image = _resolve(request, model, version)
        request.state.model = served.model.style.value
        with served:
            body = await read_body(request, settings.max_upload_bytes, settings.body_timeout_s)
            max_elements = settings.max_images_per_request * (1 if image else PIXELS)
            header = request.headers.get(BINARY_HEADER)
            parsed = (await run_in_threadpool(parse_infer_request, body, header, max_elements)
                      if len(body) > THREAD_BODY_BYTES
                      else parse_infer_request(body, header, max_elements))
            del body
            value = _the_input(parsed, image, settings.max_images_per_request)
            request.state.images = len(value)
            if image:
                probabilities = await _classify(service, served, value)
            else:
                probabilities = await service.run_tensor(served, value)
    except (ModelNotFound, ProtocolError, UploadError, QueueFull) as error:
        return _error(error)
    answer = (encode_response, model, served.model.version, parsed, probabilities)
    content, headers = (await run_in_threadpool(*answer) if len(probabilities) > 64
                        else answer[0](*answer[1:]))
    return Response(content, headers=headers)


def _resolve(request: Request, model: str, version: str | None
             ) -> tuple[ServedVersion, bool]:
    """The served version a model name and version string mean, and whether it is the
    style's image model."""
    image = model.endswith(IMAGE_SUFFIX)
    try:
        style = Style(model.removesuffix(IMAGE_SUFFIX))
    except ValueError:
        names = ", ".join(f"{s.value}, {s.value}{IMAGE_SUFFIX}" for s in Style)
        raise ModelNotFound(f"Unknown model '{model[:100]}'. Models: {names}.",
                            "missing") from None
    if version is not None and not VERSION.fullmatch(version):
        raise ProtocolError(400, f"Version '{version[:100]}' is not a version number.")
    return request.state.service.registry.resolve(
        style, int(version) if version else None), image


def _the_input(parsed: InferRequest, image: bool, max_images: int) -> np.ndarray | list:
    """The model's one input, checked against its metadata."""
    name, datatype = (IMAGE_INPUT, BYTES) if image else (TENSOR_INPUT, FP32)
    shape = "[n]" if image else f"[n, {', '.join(map(str, INPUT_SHAPE))}]"
    if [t.name for t in parsed.inputs] != [name]:
        raise ProtocolError(400, f"The model takes one input, '{name}' ({datatype} {shape}); "
                            f"the request has {[t.name[:50] for t in parsed.inputs][:5]}.")
    unknown = [o for o in parsed.outputs if o != OUTPUT_NAME]
    if unknown:
        raise ProtocolError(400, f"Unknown output {str(unknown[0])[:50]!r}: the model's only "
                            f"output is '{OUTPUT_NAME}'.")
    tensor = parsed.inputs[0]
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
    return tensor.value


async def _classify(service, served: ServedVersion, images: list[bytes]) -> np.ndarray:
    """Probabilities of each image; the protocol has no per-element error, so an image that
    cannot be read fails the request, naming it."""
    uploads = [Upload(f"{IMAGE_INPUT}[{k}]", data) for k, data in enumerate(images)]
    result = await service.classify(served, uploads)
    if result.errors:
        first = result.errors[min(result.errors)]
        raise ProtocolError(getattr(first, "status_code", 400), str(first))
    return result.outputs


def _error(error: Exception) -> JSONResponse:
    headers = None
    if isinstance(error, ProtocolError):
        status, message = error.status, error.message
    elif isinstance(error, ModelNotFound):
        status, message = (503 if error.status == "failed" else 404), str(error)
    elif isinstance(error, QueueFull):
        status, message = 503, str(error)
        headers = {"Retry-After": str(error.retry_after_s)}
    else:  # UploadError
        status, message = error.status_code, error.detail
        if error.close_connection:
            headers = {"Connection": "close"}
    return JSONResponse({"error": message}, status_code=status, headers=headers)
