"""Request-scoped access to what the lifespan built."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.observability import Metrics
from app.service import PredictionService
from app.settings import Settings


# `async def` on purpose: FastAPI runs plain `def` dependencies in its thread pool, a
# thread hand-off per dependency per request for what is an attribute lookup.
async def get_service(request: Request) -> PredictionService:
    return request.state.service


async def get_settings(request: Request) -> Settings:
    return request.state.settings


async def get_metrics(request: Request) -> Metrics:
    return request.state.metrics


ServiceDep = Annotated[PredictionService, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
