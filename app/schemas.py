"""Response bodies of the HTTP API."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from digit_contract import Style


class ErrorDetail(BaseModel):
    detail: str = Field(description="What went wrong and how to fix it.")


def error_responses(*statuses: int) -> dict[int, dict]:
    """OpenAPI `responses` for the given error statuses, each with its meaning."""
    return {status: {"model": ErrorDetail, "description": ERROR_MEANINGS[status]}
            for status in statuses}


ERROR_MEANINGS = {
    400: "An image that can't be used (undecodable, truncated, blank, crashed its decoder), "
         "bad base64, malformed multipart or JSON; says which image.",
    404: "Unknown model style (the detail lists them), or no such path.",
    408: "The request body took over DIGITS_BODY_TIMEOUT_S to arrive; the connection closes.",
    413: "Body, image count, pixels, decoding memory or time over the configured limits.",
    415: "Unsupported Content-Type, or an image format outside PNG, JPEG, WebP, GIF, BMP, TIFF.",
    503: "The model can't serve (failed to load), or its queue is full (see Retry-After).",
}


class ImageFailure(BaseModel):
    status: int = Field(description="The HTTP status this image alone would have got.",
                        examples=[400])
    detail: str = Field(description="Which image, and why it could not be read.")


class Prediction(BaseModel):
    """One image's answer: its digit, how sure the model is, and each digit's probability."""

    digit: int = Field(ge=0, le=9, examples=[7])
    confidence: float = Field(description="Probability of `digit`.", examples=[0.998])
    probabilities: list[float] = Field(description="Probability of each digit 0-9.",
                                       min_length=10, max_length=10)
    model_input: str | None = Field(
        None, description="With ?debug=true: the 28x28 image the model saw, as base64 PNG.")


class PredictionError(BaseModel):
    """In a request of several images, one that could not be read: the others are still
    answered (200). A single image that can't be read fails its request with this status
    instead."""

    error: ImageFailure


class PredictResponse(BaseModel):
    model: Style
    version: int
    predictions: list[Prediction | PredictionError] = Field(
        description="One per image, in request order: a digit, or an `error` entry for an "
                    "image that could not be read.")


class VersionInfo(BaseModel):
    version: int
    status: str = Field(description="ready (served); available (on disk, not chosen by the "
                        "version policy or a label); failed (could not be loaded or warmed "
                        "up); missing (named by the policy, not on disk).")
    labels: list[str] = Field(default_factory=list, description="Labels naming it.")
    default: bool = Field(False, description="What requests naming no version get.")
    device: str | None = None
    runtime: str | None = Field(None, description="litert or tensorflow (see DIGITS_RUNTIME).")
    source: str | None = Field(None, description="The file it runs, in the model directory.",
                               examples=["sequential/2/model.tflite"])
    loaded_at: datetime | None = None
    load_seconds: float | None = Field(None, description="Loading and warming it up took.")
    total_params: int | None = None
    metrics: dict[str, float | int] = Field(default_factory=dict)
    detail: str | None = Field(None, description="Why it is not served.")


class ModelInfo(BaseModel):
    name: Style
    status: str = Field(description="ready, missing or failed")
    version: int | None = Field(None, description="The default version: what requests "
                                "naming no version get.")
    versions: list[int] = Field(default_factory=list, description="Versions found on disk.")
    device: str | None = None
    runtime: str | None = Field(None, description="litert or tensorflow (see DIGITS_RUNTIME).")
    total_params: int | None = None
    metrics: dict[str, float | int] = Field(default_factory=dict)
    detail: str | None = Field(None, description="Why a model or a newer version isn't served.")
    policy: str = Field("latest", description="Which versions are served "
                        "(DIGITS_MODEL_VERSIONS): latest, latest:N, all or a list.")
    labels: dict[str, int] = Field(default_factory=dict,
                                   description="Label -> version (models/<style>/labels.json).")
    served: list[VersionInfo] = Field(default_factory=list,
                                      description="Every loaded version, with its state.")


class VersionList(BaseModel):
    name: Style
    default: int | None
    labels: dict[str, int]
    versions: list[VersionInfo] = Field(description="Every version on disk or named by the "
                                        "policy, ascending.")


class ModelList(BaseModel):
    models: list[ModelInfo]


class LayerSummary(BaseModel):
    name: str
    type: str
    output_shape: list[int | None] | None
    params: int


class ModelSummary(BaseModel):
    name: Style
    version: int
    class_name: str
    layers: list[LayerSummary]
    total_params: int
    trainable_params: int
    non_trainable_params: int


class Health(BaseModel):
    status: str
    models: dict[str, str] = Field(default_factory=dict)
