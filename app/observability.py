"""Prometheus metrics and the one-line-per-request access log."""

from __future__ import annotations

import json
import logging
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_logger = logging.getLogger("digits.access")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """All of the service's metrics, in a registry of their own (one per app instance)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("digits_http_requests_total", "HTTP requests.",
                                ["method", "route", "status"], registry=self.registry)
        self.in_flight = Gauge("digits_http_requests_in_flight",
                               "HTTP requests being served right now.", registry=self.registry)
        self.latency = Histogram("digits_http_request_duration_seconds", "HTTP request latency.",
                                 ["method", "route", "status"], buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self.images_per_request = Histogram(
            "digits_images_per_request", "Images (or tensors) in each prediction request, by "
            "model and protocol (native /predict, oip-rest, tfs-rest, oip-grpc).",
            ["model", "protocol"], buckets=COUNT_BUCKETS, registry=self.registry)
        self.grpc_requests = Counter("digits_grpc_requests_total", "gRPC calls, by method "
                                     "and status code.", ["method", "code"],
                                     registry=self.registry)
        self.grpc_latency = Histogram("digits_grpc_request_duration_seconds",
                                      "gRPC call latency.", ["method"],
                                      buckets=LATENCY_BUCKETS, registry=self.registry)
        self.inference = Histogram("digits_inference_seconds", "Seconds per model call.",
                                   ["model"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("digits_batch_size", "Images per model call.", ["model"],
                                    buckets=COUNT_BUCKETS, registry=self.registry)
        self.queue_seconds = Histogram("digits_queue_seconds",
                                       "Time a request's images waited for a model call.",
                                       ["model"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.shed = Counter("digits_requests_shed_total", "Requests refused with 503 because "
                            "the model's queue was full.", ["model"], registry=self.registry)
        self.image_errors = Counter(
            "digits_image_errors_total", "Images answered with their own error entry in a "
            "request that was otherwise answered (200).", ["model", "status"],
            registry=self.registry)
        self.decoder_restarts = Counter(
            "digits_decoder_restarts_total", "Decoder processes replaced after crashing or "
            "overrunning their time limit on an image.", ["reason"], registry=self.registry)
        self.model_info = Gauge("digits_model_loaded", "1 for each served model version.",
                                ["model", "version", "device", "runtime"], registry=self.registry)
        self.model_loads = Counter(
            "digits_model_loads_total", "Attempts to load a model version (at start-up and "
            "when the model directory changes), by outcome: loaded or failed.",
            ["model", "outcome"], registry=self.registry)

    def model_loaded(self, style, version: int, outcome) -> None:
        """`outcome`: the LoadedModel, or the exception that stopped it loading."""
        failed = isinstance(outcome, Exception)
        self.model_loads.labels(style.value, "failed" if failed else "loaded").inc()
        if not failed:
            self.model_info.labels(style.value, str(version), outcome.device,
                                   outcome.runtime.value).set(1)

    def model_retired(self, model) -> None:
        self.model_info.remove(model.style.value, str(model.version), model.device,
                               model.runtime.value)

    def batch_observer(self, model: str):
        """A callback for the batcher that records one model call."""
        batch_size = self.batch_size.labels(model)
        queue_seconds = self.queue_seconds.labels(model)
        inference = self.inference.labels(model)

        def observe(size: int, waited: float, ran: float) -> None:
            batch_size.observe(size)
            queue_seconds.observe(waited)
            inference.observe(ran)

        return observe


class AccessLogMiddleware:
    """Times every HTTP request, counts it by route template, and logs one JSON line."""

    def __init__(self, app: ASGIApp, metrics: Metrics, log: bool = True):
        self.app = app
        self.metrics = metrics
        self.log = log
        # Looking a labelled series up in prometheus_client takes a lock and a few calls per
        # request; the label sets are few (route templates, the methods the HTTP parser
        # knows, statuses), so each is looked up once.
        self._children: dict[tuple[str, str, int], tuple] = {}

    def _series(self, method: str, route: str, status: int) -> tuple:
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            labels = (method, route, str(status))
            children = self._children[key] = (self.metrics.requests.labels(*labels),
                                              self.metrics.latency.labels(*labels))
        return children

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees if the app fails before it answers

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self.metrics.in_flight.dec()
            self._record(scope, status, time.perf_counter() - started)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        method = scope["method"]
        count, latency = self._series(method, route, status)
        count.inc()
        latency.observe(seconds)
        if self.log and access_logger.isEnabledFor(logging.INFO):
            state = scope.get("state") or {}
            access_logger.info(json.dumps({
                "method": method, "path": scope["path"], "status": status,
                "model": state.get("model"), "images": state.get("images"),
                "latency_ms": round(seconds * 1000, 2),
            }))


def configure_logging(level: str) -> None:
    """Log lines from the `digits` loggers to stderr, once per process."""
    root = logging.getLogger("digits")
    root.setLevel(level.upper())
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        root.addHandler(handler)
        root.propagate = False
