"""Model listing, versions and summaries."""

from __future__ import annotations

import datetime
from typing import Literal

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from app.dependencies import ServiceDep
from app.registry import LoadedModel, ModelNotFound, ModelRegistry, StyleState
from app.schemas import (
    ModelInfo,
    ModelList,
    ModelSummary,
    VersionInfo,
    VersionList,
    error_responses,
)
from app.versions import version_number
from digit_contract import Style

router = APIRouter(prefix="/models", tags=["models"])


@router.get("")
async def list_models(service: ServiceDep) -> ModelList:
    """Every style: default version, every served version, labels, status and metrics."""
    return ModelList(models=[describe(service.registry, style) for style in Style])


@router.get("/{style}", responses=error_responses(404))
async def get_model(style: Style, service: ServiceDep) -> ModelInfo:
    """One style's versions, device, status and metrics."""
    return describe(service.registry, style)


@router.get("/{style}/versions", responses=error_responses(404))
async def list_versions(style: Style, service: ServiceDep) -> VersionList:
    """Every version of a style on disk (or named by the version policy), and its state."""
    state = style_state(service.registry, style)
    numbers = sorted({*state.on_disk, *state.served, *state.problems})
    return VersionList(name=style, default=state.default, labels=state.labels,
                       versions=[describe_version(state, v) for v in numbers])


@router.get("/{style}/versions/{version}", responses=error_responses(404))
async def get_version(style: Style, version: str, service: ServiceDep) -> VersionInfo:
    """One version's state, labels, device, source and metrics."""
    state = style_state(service.registry, style)
    number = version_number(version)
    if number not in {*state.on_disk, *state.served, *state.problems}:
        raise ModelNotFound(f"'{style.value}' has no version '{version[:20]}'. Versions: "
                            f"{', '.join(map(str, state.on_disk)) or 'none'}.", "missing")
    return describe_version(state, number)


SUMMARY_RESPONSES = {200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
                     **error_responses(404, 503)}


@router.get("/{style}/summary", response_model=ModelSummary, responses=SUMMARY_RESPONSES)
async def get_summary(style: Style, service: ServiceDep,
                      format: Literal["json", "text"] = "json"):
    """The Keras summary of the default version, as JSON or (?format=text) Keras' table."""
    return summary_of(service.registry.resolve(style).model, format)


@router.get("/{style}/versions/{version}/summary", response_model=ModelSummary,
            responses=SUMMARY_RESPONSES)
async def get_version_summary(style: Style, version: str, service: ServiceDep,
                              format: Literal["json", "text"] = "json"):
    """The Keras summary of one served version."""
    return summary_of(service.registry.resolve(style, served_version(style, version)).model,
                      format)


def served_version(style: Style, version: str) -> int:
    """A version path segment as a number; anything not written as one names no version."""
    number = version_number(version)
    if number is None:
        raise ModelNotFound(f"'{style.value}' has no version '{version[:20]}': versions are "
                            "numbers such as 1 or 2.", "missing")
    return number


def summary_of(model: LoadedModel, format: str):
    summary = model.metadata["summary"]
    if format == "text":
        return PlainTextResponse(summary["text"] + "\n")
    return ModelSummary(name=model.style, version=model.version, **summary)


def style_state(registry: ModelRegistry, style: Style) -> StyleState:
    return registry.styles.get(style) or StyleState(style)


def describe(registry: ModelRegistry, style: Style) -> ModelInfo:
    state = style_state(registry, style)
    common = dict(name=style, status=state.status, versions=list(state.on_disk),
                  policy=state.policy, labels=state.labels)
    if not state.served:
        return ModelInfo(**common, detail=state.reason())
    model = state.served[state.default].model
    problems = [f"version {v}: {why}" for v, why in sorted(state.problems.items())]
    if state.label_problem:
        problems.append(state.label_problem)
    return ModelInfo(
        **common, version=model.version, device=model.device, runtime=model.runtime.value,
        total_params=model.metadata["summary"]["total_params"], metrics=metrics_of(model),
        detail="; ".join(problems) or None,
        served=[describe_version(state, v) for v in sorted(state.served)])


def describe_version(state: StyleState, version: int) -> VersionInfo:
    labels = sorted(label for label, v in state.labels.items() if v == version)
    served = state.served.get(version)
    if served is None:
        status = ("failed" if version in state.on_disk else "missing"
                  ) if version in state.problems else "available"
        return VersionInfo(version=version, status=status, labels=labels,
                           detail=state.problems.get(version))
    model = served.model
    return VersionInfo(
        version=version, status="ready", labels=labels, default=version == state.default,
        device=model.device, runtime=model.runtime.value, source=model.source,
        loaded_at=datetime.datetime.fromtimestamp(model.loaded_at, datetime.UTC),
        load_seconds=round(model.load_seconds, 4),
        total_params=model.metadata["summary"]["total_params"], metrics=metrics_of(model))


def metrics_of(model: LoadedModel) -> dict[str, float | int]:
    return {k: v for k, v in model.metadata.get("metrics", {}).items()
            if isinstance(v, int | float)}
