"""The FastAPI application factory.

`uvicorn app.main:app` serves an app built from the environment's `DIGITS_*` settings;
tests and embedders call `create_app(Settings(...))`.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from app import allocator
from app.access import RequireApiKey, document_security, load_key_digests
from app.batching import QueueFull
from app.metrics_server import serve_metrics
from app.middleware import RefuseEncodedSlashes, ShedOnShutdown
from app.observability import AccessLogMiddleware, Metrics, configure_logging
from app.protocols import oip_rest, tfs_rest
from app.registry import ModelNotFound
from app.routers import health, models, predict
from app.settings import Settings
from app.uploads import ClientGone, UploadError
from digit_contract import Style

logger = logging.getLogger("digits")
STATIC_DIR = Path(__file__).parent / "static"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings.log_level)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Imported here so that building the app (and `import app.main`) stays cheap.
        from app import preprocessing
        from app.devices import select_device
        from app.lifecycle import LoadSettings, ModelWatcher
        from app.service import PredictionService

        allocator.tune()
        device = select_device(settings.device)
        logger.info("loading models from %s on %s", settings.model_dir, device)
        service = PredictionService(settings, metrics)
        watcher = ModelWatcher(
            LoadSettings(settings.model_dir, device, settings.runtime,
                         settings.model_threads(), settings.version_policies()),
            current=lambda: service.registry, serve=service.serve,
            publish=functools.partial(setattr, service, "registry"),
            on_load=metrics.model_loaded, on_retire=metrics.model_retired)
        await watcher.refresh()
        preprocessing.use_compiled_kernels(settings.compiled_preprocessing)
        # TensorFlow leaves hundreds of thousands of long-lived objects on the Python heap;
        # each full garbage collection would walk them all (a pause of a tenth of a second
        # or more). Freezing moves them out of the collector's sight.
        gc.collect()
        gc.freeze()
        service.start()
        polling = (asyncio.get_running_loop().create_task(
            watcher.run(settings.model_poll_seconds), name="model-poll")
            if settings.model_poll_seconds else None)
        metrics_server = (await serve_metrics(settings.host, settings.metrics_port,
                                              metrics.registry)
                          if settings.metrics_port else None)
        grpc_server = None
        if settings.grpc_port:
            from app.protocols import oip_grpc  # grpc only where it is asked for

            grpc_server = await oip_grpc.start_server(service, settings, metrics, app.version)
        logger.info("serving %s", ", ".join(
            f"{m.style.value} v{m.version} on {m.device} ({m.runtime.value})"
            for m in service.registry.loaded.values()) or "no model")
        try:
            yield {"service": service, "settings": settings, "metrics": metrics}
        finally:
            if grpc_server is not None:
                await grpc_server.stop(grace=settings.graceful_shutdown_s)
            if polling is not None:
                polling.cancel()
                await asyncio.gather(polling, return_exceptions=True)
            if metrics_server is not None:
                metrics_server.close()
            await watcher.close()
            await service.stop()

    app = FastAPI(
        title="digit-service",
        summary="Handwritten-digit recognition by three Keras CNN styles, for real-world images.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs" if settings.docs else None,
        redoc_url="/redoc" if settings.docs else None,
        openapi_url="/openapi.json" if settings.docs else None,
        # The service exports its own Prometheus metrics; FastAPI's OpenTelemetry hooks
        # would look up three providers on every request (a few % of the throughput).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.add_middleware(RefuseEncodedSlashes)
    app.add_middleware(ShedOnShutdown)  # inside the access log, which then counts its 503
    key_digests = load_key_digests(settings.api_keys, settings.api_keys_file)
    if key_digests:
        app.add_middleware(RequireApiKey, digests=key_digests)  # logged and counted too
        openapi = app.openapi
        app.openapi = lambda: document_security(openapi())
    app.add_middleware(AccessLogMiddleware, metrics=metrics, log=settings.access_log)
    add_error_handlers(app)
    # Routers are matched in this order, route by route: the prediction routes first, then
    # the standard protocols' (their inference calls are as hot as /predict; behind the
    # model and health routes, matching them cost 6-8% of an OIP v2 HTTP request's CPU in
    # `python -m bench.ab OLD NEW --protocol oip-http`). No path is served by two routers,
    # so the order changes only how fast a route is found.
    app.include_router(predict.router)
    app.include_router(oip_rest.router)
    app.include_router(tfs_rest.router)
    app.include_router(models.router)
    app.include_router(health.router)
    if not settings.metrics_port:
        app.include_router(health.metrics_router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def index(request: Request) -> Response:
        # Browsers get the page; other clients the liveness answer KServe v1 clients read
        # here (`is_server_live`).
        if "text/html" in request.headers.get("accept", ""):
            return FileResponse(STATIC_DIR / "index.html")
        return JSONResponse({"status": "alive"})

    return app


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(UploadError)
    async def upload_error(request: Request, error: UploadError) -> JSONResponse:
        # After a 408 (or a body refused from its first bytes, see read_body) the rest of
        # the body is not worth reading; a 503 (every decoder busy) is worth retrying soon.
        headers = ({"Connection": "close"} if error.close_connection
                   else {"Retry-After": "1"} if error.status_code == 503 else None)
        return JSONResponse(status_code=error.status_code, content={"detail": error.detail},
                            headers=headers)

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, error: ClientGone) -> Response:
        # Nobody is left to read it; 499 (nginx's "client closed request") keeps it out of
        # the 5xx counts and alerts.
        logger.info("%s %s: %s", request.method, request.url.path, error)
        return Response(status_code=499)

    @app.exception_handler(ModelNotFound)
    async def model_not_found(request: Request, error: ModelNotFound) -> JSONResponse:
        status = 503 if error.status == "failed" else 404
        return JSONResponse(status_code=status, content={"detail": str(error)})

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, error: QueueFull) -> JSONResponse:
        request.state.service.metrics.shed.labels(request.state.model).inc()
        return JSONResponse(status_code=503, content={"detail": str(error)},
                            headers={"Retry-After": str(error.retry_after_s)})

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        # An unknown style is a missing resource (404), not a malformed request (422).
        for problem in error.errors():
            if problem.get("type") == "enum" and tuple(problem["loc"]) in (
                    ("path", "style"), ("query", "model")):
                return JSONResponse(status_code=404, content={"detail": (
                    f"Unknown model '{problem.get('input')}'. Available styles: "
                    f"{', '.join(s.value for s in Style)}.")})
        return await request_validation_exception_handler(request, error)


@functools.cache
def _default_app() -> FastAPI:
    return create_app()


def __getattr__(name: str):
    # `app.main:app` is built on first access, not at import: importing the module never
    # reads the environment or loads TensorFlow.
    if name == "app":
        return _default_app()
    raise AttributeError(name)
