"""Predictions: uploads -> batch -> preprocessing workers -> one model call -> responses."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image
from starlette.concurrency import run_in_threadpool

from app.batching import Batcher, BatchResult
from app.decoding import DecodeLimits, ImageError, inspect_prefix
from app.observability import Metrics
from app.preprocess_workers import PreprocessWorkers, WorkerLimits, as_upload_error
from app.registry import LoadedModel, ModelRegistry, ServedVersion
from app.schemas import ImageFailure, Prediction, PredictionError, PredictResponse
from app.settings import Settings
from app.uploads import Upload
from digit_contract import Style, scale_pixels

# Who asked: /predict, or a standard protocol's adapter (app.protocols).
PROTOCOLS = ("native", "oip-rest", "tfs-rest", "oip-grpc")


class PredictionService:
    """Owns the registry snapshot, the preprocessing workers and one batcher per served
    model version."""

    def __init__(self, settings: Settings, metrics: Metrics):
        # Replaced whole by app.lifecycle on each change; requests resolve against it.
        self.registry = ModelRegistry({})
        self.settings = settings
        self.metrics = metrics
        self.preprocess = PreprocessWorkers(
            DecodeLimits(settings.max_image_pixels, settings.max_decode_megabytes * 2**20),
            WorkerLimits(settings.preprocess_workers, settings.decoder_memory_megabytes * 2**20,
                         settings.decode_timeout_ms / 1000,
                         settings.decode_request_timeout_ms / 1000),
            max_request_pixels=settings.max_request_pixels,
            max_waiting_images=settings.max_queue_images,
            on_restart=lambda reason: metrics.decoder_restarts.labels(reason).inc())
        # Each request observes one; a series looked up per request costs a lock and more.
        self._images_per_request = {
            (style, protocol): metrics.images_per_request.labels(style.value, protocol)
            for style in Style for protocol in PROTOCOLS}

    def serve(self, model: LoadedModel) -> ServedVersion:
        """A running batch queue for a loaded version (on the event loop)."""
        settings = self.settings
        batcher = Batcher(model.predict, prepare=self.preprocess, cheap=self.preprocess.cheap,
                          combine=model_batch, max_batch_size=settings.max_batch_size,
                          timeout_s=settings.batch_timeout_ms / 1000,
                          max_queue_images=settings.max_queue_images,
                          name=f"{model.style.value}-v{model.version}",
                          observe=self.metrics.batch_observer(model.style.value))
        batcher.start()
        return ServedVersion(model, batcher)

    def inspect_body_prefix(self, prefix: bytes) -> None:
        """Refuse a single-image body from its first bytes (see `decoding.inspect_prefix`),
        as the whole image would be refused."""
        try:
            inspect_prefix(prefix, self.preprocess.decode_limits)
        except ImageError as error:
            raise as_upload_error(Upload("request body", prefix), error) from error

    def start(self) -> None:
        self.preprocess.start()

    async def stop(self) -> None:
        for state in self.registry.styles.values():
            for served in state.served.values():
                await served.batcher.stop()
        self.preprocess.close()

    async def predict(self, served: ServedVersion, uploads: list[Upload],
                      debug: bool) -> PredictResponse:
        result = await self.classify(served, uploads)
        if debug:  # encoding a PNG per image is CPU work: keep it off the event loop
            return await run_in_threadpool(build_response, served.model, result, True)
        return build_response(served.model, result, False)

    async def classify(self, served: ServedVersion, uploads: list[Upload],
                       protocol: str = "native") -> BatchResult:
        """Images -> their digits (prepared here) and probabilities, in the model's queue."""
        model = served.model
        self._images_per_request[model.style, protocol].observe(len(uploads))
        payload = self.preprocess.in_batch(uploads)
        if payload is None:
            payload = await self.preprocess.prepare_ahead(uploads)
        result = await served.batcher.submit(payload, size=len(uploads))
        for error in result.errors.values():
            self.metrics.image_errors.labels(model.style.value,
                                             str(getattr(error, "status_code", 400))).inc()
        return result

    async def run_tensor(self, served: ServedVersion, tensor: np.ndarray,
                         protocol: str) -> np.ndarray:
        """float32 [n, 28, 28, 1] model inputs, as sent -> probabilities [n, 10]. They join
        the same queue, and share model calls, with image requests."""
        self._images_per_request[served.model.style, protocol].observe(len(tensor))
        return (await served.batcher.submit(tensor, size=len(tensor))).outputs


def model_batch(inputs: list[np.ndarray]) -> np.ndarray:
    """One model batch, float32 [n, 28, 28, 1], from its requests' inputs: uint8 digits
    [m, 28, 28] (images, prepared here; scaled as in training) or float32 tensors
    [m, 28, 28, 1] (sent as such by protocol clients, app.protocols), which share a call."""
    if all(x.dtype == np.uint8 for x in inputs):
        pixels = inputs[0] if len(inputs) == 1 else np.concatenate(inputs)
        return scale_pixels(pixels)[..., np.newaxis]
    return np.concatenate([scale_pixels(x)[..., np.newaxis] if x.dtype == np.uint8 else x
                           for x in inputs])


def build_response(model: LoadedModel, result: BatchResult, debug: bool) -> PredictResponse:
    """One entry per image, in request order: the model's answer, or the image's error."""
    digits = result.outputs.argmax(axis=1)
    rounded = result.outputs.astype(np.float64).round(6).tolist()
    answered = iter([
        Prediction(digit=int(digit), confidence=row[digit], probabilities=row,
                   model_input=encode_png(result.inputs[i]) if debug else None)
        for i, (digit, row) in enumerate(zip(digits, rounded, strict=True))
    ])
    count = len(digits) + len(result.errors)
    predictions = [failure(result.errors[i]) if i in result.errors else next(answered)
                   for i in range(count)]
    return PredictResponse(model=model.style, version=model.version, predictions=predictions)


def failure(error: Exception) -> PredictionError:
    return PredictionError(error=ImageFailure(status=getattr(error, "status_code", 400),
                                              detail=str(error)))


def encode_png(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
