"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.dependencies import MetricsDep, ServiceDep
from app.schemas import Health

router = APIRouter(tags=["health"])
# On the main port unless DIGITS_METRICS_PORT gives metrics a port of their own.
metrics_router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> Health:
    """Liveness: the process answers."""
    return Health(status="ok")


@router.get("/readyz", responses={503: {"model": Health}})
async def readyz(service: ServiceDep) -> Health:
    """Readiness: 200 once every available model is loaded and warmed up."""
    statuses = {style.value: state.status for style, state in service.registry.styles.items()}
    if not service.registry.loaded:
        return JSONResponse(status_code=503, content=Health(status="no model loaded",
                                                            models=statuses).model_dump())
    return Health(status="ready", models=statuses)


@metrics_router.get("/metrics", response_class=Response)
async def metrics(metrics: MetricsDep) -> Response:
    """Prometheus metrics in the text exposition format."""
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
