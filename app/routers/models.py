"""Model listing and summaries."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from app.dependencies import ServiceDep
from app.registry import ModelRegistry
from app.schemas import ModelInfo, ModelList, ModelSummary, error_responses
from digit_contract import Style

router = APIRouter(prefix="/models", tags=["models"])


@router.get("")
async def list_models(service: ServiceDep) -> ModelList:
    """Every style: served version, device, status and validation metrics."""
    return ModelList(models=[describe(service.registry, style) for style in Style])


@router.get("/{style}", responses=error_responses(404))
async def get_model(style: Style, service: ServiceDep) -> ModelInfo:
    """One style's version, device, status and metrics."""
    return describe(service.registry, style)


@router.get("/{style}/summary", response_model=ModelSummary,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
                       **error_responses(404, 503)})
async def get_summary(style: Style, service: ServiceDep,
                      format: Literal["json", "text"] = "json"):
    """The Keras summary of the served model, as JSON or (?format=text) Keras' own table."""
    model = service.registry.get(style)
    summary = model.metadata["summary"]
    if format == "text":
        return PlainTextResponse(summary["text"] + "\n")
    return ModelSummary(name=style, version=model.version, **summary)


def describe(registry: ModelRegistry, style: Style) -> ModelInfo:
    if style in registry.loaded:
        model = registry.loaded[style]
        return ModelInfo(
            name=style, status="ready", version=model.version, versions=list(model.versions),
            device=model.device, runtime=model.runtime.value,
            total_params=model.metadata["summary"]["total_params"],
            metrics={k: v for k, v in model.metadata.get("metrics", {}).items()
                     if isinstance(v, int | float)},
            detail=("newer versions failed to load: " + "; ".join(model.skipped))
            if model.skipped else None,
        )
    problem = registry.unavailable[style]
    return ModelInfo(name=style, status=problem.status, versions=list(problem.versions),
                     detail=problem.reason)
