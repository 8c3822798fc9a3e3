"""Prediction endpoints."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response

from app.schemas import PredictResponse, error_responses
from app.uploads import read_uploads
from digit_contract import Style

router = APIRouter(tags=["predict"])

# The body is read by hand (three accepted forms, size checked while reading), so its
# schema is described here for the OpenAPI page.
REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["file"],
                "properties": {"file": {"type": "array", "minItems": 1,
                                        "items": {"type": "string", "format": "binary"}}}}},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {"schema": {
                "type": "object", "required": ["images"],
                "properties": {"images": {"type": "array", "minItems": 1,
                                          "items": {"type": "string", "format": "byte"}}}}},
        },
    }
}

PREDICT_ERRORS = error_responses(400, 404, 408, 413, 415, 503)

DebugQuery = Query(False, description="Add the 28x28 image each model saw (base64 PNG).")


# The prediction routes take the service and settings from `request.state` themselves
# rather than through `Depends`: resolving dependencies was a quarter of the event loop's
# time per single-image request. The other routes use the dependencies in app.dependencies.

@router.post("/predict", openapi_extra=REQUEST_BODY, response_model=PredictResponse,
             responses=PREDICT_ERRORS)
async def predict(request: Request, model: Style | None = None,
                  debug: bool = DebugQuery) -> Response:
    """Classify one or more digit images with the default (or ?model=) style."""
    return await _predict(request, model or request.state.settings.default_model, debug)


@router.post("/models/{style}/predict", openapi_extra=REQUEST_BODY,
             response_model=PredictResponse, responses=PREDICT_ERRORS)
async def predict_with(request: Request, style: Style, debug: bool = DebugQuery) -> Response:
    """Classify one or more digit images with the given style."""
    return await _predict(request, style, debug)


async def _predict(request: Request, style: Style, debug: bool) -> Response:
    service, settings = request.state.service, request.state.settings
    request.state.model = style.value
    model = service.registry.get(style)  # fails before the body is read
    uploads = await read_uploads(request, settings.max_upload_bytes,
                                 settings.max_images_per_request, settings.body_timeout_s,
                                 inspect_image=service.inspect_body_prefix)
    request.state.images = len(uploads)
    answer = await service.predict(model, uploads, debug)
    # Serialised by pydantic-core straight to JSON bytes: this is the hot path.
    return Response(answer.model_dump_json(exclude_none=True), media_type="application/json")
