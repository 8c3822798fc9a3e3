"""Open Inference Protocol v2 over HTTP (`/v2`): what KServe v2 and Triton clients speak.

Each style is two models (`app.protocols.models`): `<style>` with the FP32 input `image`
[n, 28, 28, 1], `<style>_image` with the BYTES input `image_bytes` [n]. A thin adapter:
versions, batch queues, limits and hostile-input rules are the service's own (a tensor
request shares model calls with image requests). Errors are `{"error": "..."}`, as the
protocol's clients expect, with the service's statuses.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from app.protocols.models import (
    ERRORS,
    IMAGE_INPUT,
    TENSOR_INPUT,
    THREAD_ANSWER_ROWS,
    THREAD_BODY_BYTES,
    classify_images,
    decompressed,
    error_response,
    model_config,
    model_input,
    off_the_loop_if,
    resolve,
)
from app.protocols.tensors import (
    BINARY_HEADER,
    BYTES,
    FP32,
    OUTPUT_NAME,
    encode_response,
    parse_infer_request,
)
from app.registry import StyleState
from app.uploads import read_body
from digit_contract import INPUT_SHAPE

router = APIRouter(prefix="/v2", include_in_schema=False)

PROTOCOL = "oip-rest"


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
        served, image = resolve(request.state.service.registry, model, version)
    except ERRORS as error:
        return error_response(error)
    state: StyleState = request.state.service.registry.styles[served.model.style]
    versions = [version] if version else [str(v) for v in sorted(state.served)]
    return JSONResponse({
        "name": model, "versions": versions,
        "platform": "ensemble" if image else "tensorflow_savedmodel",
        "inputs": [{"name": IMAGE_INPUT, "datatype": BYTES, "shape": [-1]} if image else
                   {"name": TENSOR_INPUT, "datatype": FP32, "shape": [-1, *INPUT_SHAPE]}],
        "outputs": [{"name": OUTPUT_NAME, "datatype": FP32, "shape": [-1, 10]}]})


@router.get("/models/{model}/config")
@router.get("/models/{model}/versions/{version}/config")
async def config(request: Request, model: str, version: str | None = None) -> JSONResponse:
    """Triton's model configuration extension, which perf_analyzer needs."""
    try:
        _, image = resolve(request.state.service.registry, model, version)
    except ERRORS as error:
        return error_response(error)
    return JSONResponse(model_config(model, image,
                                     request.state.settings.max_images_per_request))


@router.get("/models/{model}/ready")
@router.get("/models/{model}/versions/{version}/ready")
async def model_ready(request: Request, model: str, version: str | None = None
                      ) -> JSONResponse:
    try:
        resolve(request.state.service.registry, model, version)
    except ERRORS as error:
        return error_response(error)
    return JSONResponse({"name": model, "ready": True})


@router.post("/models/{model}/infer")
@router.post("/models/{model}/versions/{version}/infer")
async def infer(request: Request) -> Response:
    # The path is read by hand, as /predict's is: FastAPI's parameter resolution is a few
    # percent of a single-digit request (app/routers/predict.py).
    model, version = request.path_params["model"], request.path_params.get("version")
    service, settings = request.state.service, request.state.settings
    try:
        served, image = resolve(service.registry, model, version)
        request.state.model = served.model.style.value
        with served:
            body = await read_body(request, settings.max_upload_bytes, settings.body_timeout_s)
            limit = settings.max_images_per_request
            body = await decompressed(request, body, settings.max_upload_bytes)
            header = request.headers.get(BINARY_HEADER)
            parsed = await off_the_loop_if(len(body) > THREAD_BODY_BYTES,
                                           parse_infer_request, body, header, limit)
            del body
            value = model_input(parsed.inputs, parsed.outputs, image,
                                settings.max_images_per_request)
            request.state.images = len(value)
            if image:
                probabilities = await classify_images(service, served, value, PROTOCOL)
            else:
                probabilities = await service.run_tensor(served, value, PROTOCOL)
    except ERRORS as error:
        return error_response(error)
    content, headers = await off_the_loop_if(len(probabilities) > THREAD_ANSWER_ROWS,
                                             encode_response, model, served.model.version,
                                             parsed, probabilities)
    return Response(content, headers=headers)




