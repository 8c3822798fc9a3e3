"""TensorFlow Serving's REST API (`/v1`), which KServe v1 clients speak too.

Paths as TensorFlow Serving matches them: `/v1/models/<model>[/versions/<v>|/labels/<l>]`
for the status, `.../metadata` for the signature (read from the SavedModel,
`app.protocols.signatures`), and `...:predict` with `instances` (row) or `inputs`
(columnar) bodies, read as JSON whatever their Content-Type (`curl -d` sends a form's).
Images travel as `{"b64": "..."}` to `<style>_image`. A thin adapter onto the same engine
as `/predict` and `/v2`.
"""

from __future__ import annotations

import logging
import re

import numpy as np
from fastapi import APIRouter, Request
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
    model_names,
    off_the_loop_if,
    resolve,
)
from app.protocols.signatures import read_signatures
from app.protocols.tensors import (
    OUTPUT_NAME,
    PIXELS,
    ProtocolError,
    check_finite,
    decode_base64,
    float32_numbers,
    load_json,
)
from app.registry import LoadedModel, ServedVersion
from app.uploads import read_body
from digit_contract import INPUT_SHAPE, NUM_CLASSES, SIGNATURE_NAME

logger = logging.getLogger("digits.tfs")
router = APIRouter(prefix="/v1", include_in_schema=False)
PROTOCOL = "tfs-rest"

# TensorFlow Serving's own patterns (model_servers/http_rest_api_handler.cc).
MODEL_PATH = re.compile(r"/v1/models/([^/:]+)(?:/versions/([^/:]+)|/labels/([^/:]+))?")
STATUS_PATH = re.compile(MODEL_PATH.pattern + r"(/metadata)?")
PREDICT_PATH = re.compile(MODEL_PATH.pattern + r":(predict|classify|regress)")


@router.get("/models")
async def list_models(request: Request) -> dict:
    """The served model names (what KServe v1's model listing reads)."""
    return {"models": model_names(request.state.service.registry)}


@router.get("/models/{path:path}")
async def status_or_metadata(request: Request, path: str) -> JSONResponse:
    match = STATUS_PATH.fullmatch(request.url.path)
    try:
        if match is None:
            raise ProtocolError(404, "Malformed request: GET /v1/models/<model>[/versions/<v>"
                                "|/labels/<label>][/metadata]")
        model, version, label, metadata = match.groups()
        served, image = _resolve(request, model, version, label)
    except ERRORS as error:
        return error_response(error)
    if metadata:
        return JSONResponse(_metadata(model, served, image))
    registry = request.state.service.registry
    versions = ([served.model.version] if version or label
                else sorted(registry.styles[served.model.style].served))
    return JSONResponse({
        "model_version_status": [{"version": str(v), "state": "AVAILABLE",
                                  "status": {"error_code": "OK", "error_message": ""}}
                                 for v in versions],
        # What KServe v1 clients read (`is_model_ready`) from the same answer.
        "name": model, "ready": True})


@router.post("/models/{path:path}")
async def predict(request: Request) -> JSONResponse:
    # The path is matched by hand (as TensorFlow Serving does), not resolved by FastAPI.
    service, settings = request.state.service, request.state.settings
    match = PREDICT_PATH.fullmatch(request.url.path)
    try:
        if match is None:
            raise ProtocolError(404, "Malformed request: POST /v1/models/<model>[/versions/"
                                "<v>|/labels/<label>]:predict")
        model, version, label, verb = match.groups()
        served, image = _resolve(request, model, version, label)
        if verb != "predict":
            raise ProtocolError(400, f"The model has no {verb} signature (it is not a "
                                "tf.Example classifier or regressor): use :predict.")
        request.state.model = served.model.style.value
        with served:
            body = await read_body(request, settings.max_upload_bytes, settings.body_timeout_s)
            body = await decompressed(request, body, settings.max_upload_bytes)
            value, row = await off_the_loop_if(len(body) > THREAD_BODY_BYTES, parse_predict,
                                               body, image, settings.max_images_per_request)
            del body
            request.state.images = len(value)
            probabilities = (await classify_images(service, served, value, PROTOCOL) if image
                             else await service.run_tensor(served, value, PROTOCOL))
    except ERRORS as error:
        return error_response(error)
    answer = {"predictions" if row else "outputs": probabilities.tolist()}
    return await off_the_loop_if(len(probabilities) > THREAD_ANSWER_ROWS, JSONResponse, answer)


def _resolve(request: Request, model: str, version: str | None, label: str | None
             ) -> tuple[ServedVersion, bool]:
    registry = request.state.service.registry
    if label is not None:
        served, image = resolve(registry, model)  # the model must exist first
        if label not in registry.styles[served.model.style].labels:
            # TensorFlow Serving's answer to an unknown label (InvalidArgument).
            raise ProtocolError(400, f"Unrecognized servable version label: {label[:100]}")
    return resolve(registry, model, version, label)


def _metadata(model: str, served: ServedVersion, image: bool) -> dict:
    signatures = _signatures(served.model)
    if image:  # the image model's signature: encoded images in, the same output
        signatures = {SIGNATURE_NAME: {
            "inputs": {IMAGE_INPUT: _tensor_info("DT_STRING", f"{IMAGE_INPUT}:0", [-1])},
            "outputs": signatures[SIGNATURE_NAME]["outputs"],
            "method_name": "tensorflow/serving/predict"}}
    return {"model_spec": {"name": model, "signature_name": "",
                           "version": str(served.model.version)},
            "metadata": {"signature_def": {"signature_def": signatures}}}


def _signatures(model: LoadedModel) -> dict:
    """The SavedModel's signatures; if its saved_model.pb cannot be read (a version can
    serve from its LiteRT file alone), the signature every version has by contract."""
    try:
        signatures = read_signatures(model.path, model.loaded_at)
        signatures[SIGNATURE_NAME]["outputs"]
    except (OSError, ValueError, KeyError, StopIteration, UnicodeDecodeError):
        logger.warning("cannot read the signatures of %s; answering the contract's",
                       model.path)
        return {SIGNATURE_NAME: {
            "inputs": {TENSOR_INPUT: _tensor_info(
                "DT_FLOAT", f"serving_default_{TENSOR_INPUT}:0", [-1, *INPUT_SHAPE])},
            "outputs": {OUTPUT_NAME: _tensor_info("DT_FLOAT", "StatefulPartitionedCall:0",
                                                  [-1, NUM_CLASSES])},
            "method_name": "tensorflow/serving/predict"}}
    return signatures


def _tensor_info(dtype: str, name: str, shape: list[int]) -> dict:
    return {"dtype": dtype, "name": name,
            "tensor_shape": {"dim": [{"size": str(size), "name": ""} for size in shape],
                             "unknown_rank": False}}


def parse_predict(body: bytes, image: bool, max_images: int
                  ) -> tuple[np.ndarray | list[bytes], bool]:
    """A `:predict` body -> the model's input, and whether it came in row form."""
    document = load_json(body, max_images * PIXELS)
    if not isinstance(document, dict):
        raise ProtocolError(400, "The body must be a JSON object with 'instances' or 'inputs'.")
    signature = document.get("signature_name")
    # The SavedModel's two signatures ("serve" is Keras' name for the same function).
    if signature not in (None, "", SIGNATURE_NAME, "serve"):
        raise ProtocolError(400, f"Serving signature name: {str(signature)[:100]!r} not found "
                            f"in signature def; the model has '{SIGNATURE_NAME}'.")
    if ("instances" in document) == ("inputs" in document):
        raise ProtocolError(400, "The body must have exactly one of 'instances' (row format) "
                            "or 'inputs' (columnar format).")
    name = IMAGE_INPUT if image else TENSOR_INPUT
    row = "instances" in document
    if row:
        values = document["instances"]
        if isinstance(values, list):
            values = [_unwrap(value, name) for value in values]
    else:
        values = _unwrap(document["inputs"], name)
    if not isinstance(values, list) or not values:
        raise ProtocolError(400, f"'{'instances' if row else 'inputs'}' must be a non-empty "
                            "list, one element per example.")
    if len(values) > max_images:
        raise ProtocolError(413, f"{len(values)} examples in one request; at most "
                            f"{max_images} (DIGITS_MAX_IMAGES_PER_REQUEST).")
    return (_images(values) if image else _tensor(values)), row


def _unwrap(value, name: str):
    """`{name: value}` -> value (a single-input signature also takes the bare value)."""
    if isinstance(value, dict) and "b64" not in value:
        if set(value) != {name}:
            raise ProtocolError(400, f"Unknown input(s) {sorted(value)[:5]}: the model's only "
                                f"input is '{name}'.")
        return value[name]
    return value


def _tensor(values: list) -> np.ndarray:
    tensor = float32_numbers(values, "Each example must be numbers nested as [28][28][1] "
                                     "(float32 in [0, 1], light digit on dark).")
    if tensor.shape[1:] != INPUT_SHAPE:
        raise ProtocolError(400, f"The input has shape {list(tensor.shape)[:8]}; the model "
                            f"takes [-1, {', '.join(map(str, INPUT_SHAPE))}].")
    return check_finite(tensor, TENSOR_INPUT)


def _images(values: list) -> list[bytes]:
    images = []
    for k, value in enumerate(values):
        if not (isinstance(value, dict) and set(value) == {"b64"}
                and isinstance(value["b64"], str)):
            raise ProtocolError(400, f"Example {k}: an image is sent as {{\"b64\": \"<base64 "
                                "of the file>\"}.")
        images.append(decode_base64(value["b64"], f"Example {k}"))
    return images
