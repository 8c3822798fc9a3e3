"""Prediction endpoints."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError

from app.routers.models import served_version
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

PREDICT_ERRORS = {
    **error_responses(400, 404, 408, 413, 415, 503),
    422: {"description": "Validation Error",
          "content": {"application/json": {
              "schema": {"$ref": "#/components/schemas/HTTPValidationError"}}}},
}

DEBUG_DESCRIPTION = "Add the 28x28 image each model saw (base64 PNG)."


def _parameters(style_in: str) -> list[dict]:
    """The OpenAPI parameters of a prediction route, which reads them itself (below)."""
    style = {"$ref": "#/components/schemas/Style"}
    debug = {"name": "debug", "in": "query", "required": False,
             "description": DEBUG_DESCRIPTION,
             "schema": {"type": "boolean", "default": False, "title": "Debug",
                        "description": DEBUG_DESCRIPTION}}
    if style_in == "path":
        return [{"name": "style", "in": "path", "required": True, "schema": style}, debug]
    return [{"name": "model", "in": "query", "required": False,
             "schema": {"anyOf": [style, {"type": "null"}], "title": "Model"}}, debug]


# The prediction routes read their parameters, and the service and settings (from
# `request.state`), themselves rather than through FastAPI's parameter and `Depends`
# resolution: resolving them was a quarter of the event loop's time per single-image
# request, and the query alone still cost 5% of the service's throughput. The other routes
# use FastAPI's parameters and the dependencies in app.dependencies.

@router.post("/predict", openapi_extra={**REQUEST_BODY, "parameters": _parameters("query")},
             response_model=PredictResponse, responses=PREDICT_ERRORS)
async def predict(request: Request) -> Response:
    """Classify one or more digit images with the default (or ?model=) style."""
    model = _style(_query_value(request, "model"), "query", "model")
    return await _predict(request, model or request.state.settings.default_model,
                          _debug(request))


@router.post("/models/{style}/predict",
             openapi_extra={**REQUEST_BODY, "parameters": _parameters("path")},
             response_model=PredictResponse, responses=PREDICT_ERRORS)
async def predict_with(request: Request) -> Response:
    """Classify one or more digit images with the given style."""
    style = _style(request.path_params["style"], "path", "style")
    return await _predict(request, style, _debug(request))


_BOOLEAN = TypeAdapter(bool)


def _style(value: str | None, where: str, name: str) -> Style | None:
    """The style named by a parameter: an unknown one fails as FastAPI's own check would
    (app.main turns that into a 404 listing the styles)."""
    if value is None:
        return None
    try:
        return Style(value)
    except ValueError:
        raise RequestValidationError([{
            "type": "enum", "loc": (where, name), "input": value,
            "msg": f"Input should be {', '.join(repr(s.value) for s in Style)}"}]) from None


def _query_value(request: Request, name: str) -> str | None:
    # Most requests have no query string: don't parse one.
    return request.query_params.get(name) if request.scope["query_string"] else None


def _debug(request: Request) -> bool:
    """?debug=, read as FastAPI reads a boolean query parameter (true/false, 1/0, yes/no...)."""
    value = _query_value(request, "debug")
    if value is None:
        return False
    try:
        return _BOOLEAN.validate_python(value)
    except ValidationError as error:
        raise RequestValidationError([{**problem, "loc": ("query", "debug")}
                                      for problem in error.errors(include_url=False)]) from None


@router.post("/models/{style}/versions/{version}/predict",
             openapi_extra=REQUEST_BODY, response_model=PredictResponse,
             responses=PREDICT_ERRORS)
async def predict_with_version(request: Request, style: Style, version: str,
                               debug: bool = Query(False, description=DEBUG_DESCRIPTION)
                               ) -> Response:
    """Classify one or more digit images with one version of a style (any served one:
    see GET /models/{style}/versions)."""
    return await _predict(request, style, debug, version=served_version(style, version))


@router.post("/models/{style}/labels/{label}/predict",
             openapi_extra=REQUEST_BODY, response_model=PredictResponse,
             responses=PREDICT_ERRORS)
async def predict_with_label(request: Request, style: Style, label: str,
                             debug: bool = Query(False, description=DEBUG_DESCRIPTION)
                             ) -> Response:
    """Classify one or more digit images with the version a label (stable, canary...)
    names in models/{style}/labels.json."""
    return await _predict(request, style, debug, label=label)


async def _predict(request: Request, style: Style, debug: bool, version: int | None = None,
                   label: str | None = None) -> Response:
    service, settings = request.state.service, request.state.settings
    request.state.model = style.value
    # Fails before the body is read. The request keeps this version to its end, even if a
    # newer one is swapped in meanwhile (app.lifecycle).
    with service.registry.resolve(style, version, label) as served:
        uploads = await read_uploads(request, settings.max_upload_bytes,
                                     settings.max_images_per_request, settings.body_timeout_s,
                                     inspect_image=service.inspect_body_prefix)
        request.state.images = len(uploads)
        answer = await service.predict(served, uploads, debug)
    # Serialised by pydantic-core straight to JSON bytes: this is the hot path.
    return Response(answer.model_dump_json(exclude_none=True), media_type="application/json")
