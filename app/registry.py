"""Loading the served models: the highest loadable version of each style, on one device."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf

from digit_contract import INPUT_SHAPE, METADATA_FILE, SIGNATURE_NAME, Style, list_versions

logger = logging.getLogger("digits.registry")


class ModelNotFound(LookupError):
    """No usable model of that style; the message names the ones that are served."""

    def __init__(self, message: str, status: str):
        super().__init__(message)
        self.status = status  # "missing" (nothing on disk) or "failed" (broken on disk)


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """One SavedModel ready to serve: its serving function, version, device and metadata."""

    style: Style
    version: int
    versions: tuple[int, ...]
    device: str
    path: Path
    metadata: dict
    serve: Callable[[tf.Tensor], tf.Tensor]
    # Versions above `version` that failed to load; empty when the newest one serves.
    skipped: tuple[str, ...] = ()
    # The loaded SavedModel object: the signature function only holds weak references to
    # its variables, so this keeps them alive.
    saved_model: object = dataclasses.field(default=None, repr=False, compare=False)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities [n, 10] for float32 images [n, 28, 28, 1]."""
        with tf.device(self.device):
            return self.serve(tf.convert_to_tensor(images, dtype=tf.float32)).numpy()


@dataclasses.dataclass(frozen=True)
class UnavailableModel:
    """A style that could not be loaded, and why."""

    style: Style
    status: str  # "missing" or "failed"
    reason: str
    versions: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class ModelRegistry:
    loaded: dict[Style, LoadedModel]
    unavailable: dict[Style, UnavailableModel]

    def get(self, style: Style) -> LoadedModel:
        if style in self.loaded:
            return self.loaded[style]
        served = ", ".join(s.value for s in self.loaded) or "none"
        problem = self.unavailable.get(style)
        why = f": {problem.reason}" if problem else ""
        raise ModelNotFound(f"Model '{style.value}' is not being served{why}. "
                            f"Available models: {served}.",
                            status=problem.status if problem else "missing")


def load_registry(model_dir: Path, device: str) -> ModelRegistry:
    """Load every style found under `model_dir`; one broken style never stops the others."""
    loaded, unavailable = {}, {}
    for style in Style:
        result = load_style(model_dir / style.value, style, device)
        if isinstance(result, LoadedModel):
            loaded[style] = result
            logger.info("loaded %s version %d on %s from %s", style.value, result.version,
                        device, result.path)
        else:
            unavailable[style] = result
            logger.warning("model %s unavailable (%s) in %s: %s", style.value, result.status,
                           model_dir / style.value, result.reason)
    return ModelRegistry(loaded=loaded, unavailable=unavailable)


def load_style(style_dir: Path, style: Style, device: str) -> LoadedModel | UnavailableModel:
    """The highest version that loads and answers a warm-up call; older ones as fallback."""
    versions = tuple(list_versions(style_dir))
    if not versions:
        return UnavailableModel(style, "missing",
                                "No version directory in the model directory. Train one "
                                f"with: python -m training --style {style.value}")
    failures = []
    for version in reversed(versions):
        try:
            model = load_version(style_dir / str(version), style, version, versions, device)
        except Exception as error:  # noqa: BLE001 - any failure means "try the next one"
            # The public reason names the error's kind only: its message may hold paths of
            # this machine, which the log keeps.
            failures.append(f"version {version}: {error.__class__.__name__} (see the log)")
            logger.error("cannot load %s version %d from %s: %s", style.value, version,
                         style_dir / str(version), error)
            continue
        return dataclasses.replace(model, skipped=tuple(failures))
    return UnavailableModel(style, "failed", "; ".join(failures), versions)


def load_version(path: Path, style: Style, version: int, versions: tuple[int, ...],
                 device: str) -> LoadedModel:
    metadata = json.loads((path / METADATA_FILE).read_text())
    with tf.device(device):
        saved = tf.saved_model.load(str(path))
    serve = serving_function(saved)
    model = LoadedModel(style=style, version=version, versions=versions, device=device,
                        path=path, metadata=metadata, serve=serve, saved_model=saved)
    warm_up(model)
    return model


def serving_function(saved) -> Callable[[tf.Tensor], tf.Tensor]:
    """The model as one concrete function: float32 [n, 28, 28, 1] -> probabilities [n, 10].

    Keras exports the same graph twice: as the `serve` endpoint and wrapped in the
    `serving_default` signature for TensorFlow Serving. On CPU the signature's extra call
    layer costs about 3 ms per call against 0.5 ms for the endpoint, so the endpoint is
    used when the SavedModel has it; the signature is the fallback.
    """
    endpoint = getattr(saved, "serve", None)
    if endpoint is not None:
        return endpoint.get_concrete_function(tf.TensorSpec((None, *INPUT_SHAPE), tf.float32))
    signature = saved.signatures[SIGNATURE_NAME]
    return lambda images: next(iter(signature(images).values()))


def warm_up(model: LoadedModel) -> None:
    """Run the model once so the first real request does not pay for graph setup."""
    started = time.perf_counter()
    probabilities = model.predict(np.zeros((1, *INPUT_SHAPE), dtype=np.float32))
    if probabilities.shape != (1, 10) or not np.isfinite(probabilities).all():
        raise ValueError(f"warm-up returned {probabilities.shape} with non-finite values")
    logger.debug("warmed up %s in %.1f ms", model.style.value,
                 (time.perf_counter() - started) * 1000)
