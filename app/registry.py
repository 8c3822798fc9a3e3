"""Loading the served models: the highest loadable version of each style, on one device
and runtime (`app.runtimes`)."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np

from app.runtimes import Runner, Runtime, choose, load
from digit_contract import INPUT_SHAPE, METADATA_FILE, Style, list_versions

logger = logging.getLogger("digits.registry")


class ModelNotFound(LookupError):
    """No usable model of that style; the message names the ones that are served."""

    def __init__(self, message: str, status: str):
        super().__init__(message)
        self.status = status  # "missing" (nothing on disk) or "failed" (broken on disk)


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """One model version ready to serve: its runner, version, device, runtime and metadata."""

    style: Style
    version: int
    versions: tuple[int, ...]
    device: str
    path: Path
    metadata: dict
    run: Runner
    runtime: Runtime = Runtime.tensorflow
    # Versions above `version` that failed to load; empty when the newest one serves.
    skipped: tuple[str, ...] = ()
    # What the runner needs kept alive (the loaded SavedModel, or the interpreter).
    keep: object = dataclasses.field(default=None, repr=False, compare=False)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities [n, 10] for float32 images [n, 28, 28, 1]."""
        return self.run(images)


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


def load_registry(model_dir: Path, device: str, runtime: Runtime = Runtime.auto,
                  threads: int = 1) -> ModelRegistry:
    """Load every style found under `model_dir`; one broken style never stops the others."""
    loaded, unavailable = {}, {}
    for style in Style:
        result = load_style(model_dir / style.value, style, device, runtime, threads)
        if isinstance(result, LoadedModel):
            loaded[style] = result
            logger.info("loaded %s version %d on %s with %s from %s", style.value,
                        result.version, device, result.runtime.value, result.path)
        else:
            unavailable[style] = result
            logger.warning("model %s unavailable (%s) in %s: %s", style.value, result.status,
                           model_dir / style.value, result.reason)
    return ModelRegistry(loaded=loaded, unavailable=unavailable)


def load_style(style_dir: Path, style: Style, device: str, runtime: Runtime = Runtime.auto,
               threads: int = 1) -> LoadedModel | UnavailableModel:
    """The highest version that loads and answers a warm-up call; older ones as fallback."""
    versions = tuple(list_versions(style_dir))
    if not versions:
        return UnavailableModel(style, "missing",
                                "No version directory in the model directory. Train one "
                                f"with: python -m training --style {style.value}")
    failures = []
    for version in reversed(versions):
        try:
            model = load_version(style_dir / str(version), style, version, versions, device,
                                 runtime, threads)
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
                 device: str, runtime: Runtime = Runtime.auto, threads: int = 1) -> LoadedModel:
    metadata = json.loads((path / METADATA_FILE).read_text())
    check_metadata(metadata)
    runtime = choose(runtime, device, path)
    run, keep = load(runtime, path, device, threads)
    model = LoadedModel(style=style, version=version, versions=versions, device=device,
                        path=path, metadata=metadata, run=run, runtime=runtime, keep=keep)
    warm_up(model)
    return model


def check_metadata(metadata) -> None:
    """What the routes read from metadata.json must be there: a version whose file lacks it
    is a broken version (the next one down serves), not a 500 on /models later."""
    summary = metadata.get("summary") if isinstance(metadata, dict) else None
    if not isinstance(summary, dict) or not SUMMARY_KEYS <= summary.keys():
        raise ValueError(f"{METADATA_FILE} has no complete model summary")


SUMMARY_KEYS = {"text", "class_name", "layers", "total_params", "trainable_params",
                "non_trainable_params"}


def warm_up(model: LoadedModel) -> None:
    """Run the model once so the first real request does not pay for graph setup."""
    started = time.perf_counter()
    probabilities = model.predict(np.zeros((1, *INPUT_SHAPE), dtype=np.float32))
    if probabilities.shape != (1, 10) or not np.isfinite(probabilities).all():
        raise ValueError(f"warm-up returned {probabilities.shape} with non-finite values")
    logger.debug("warmed up %s in %.1f ms", model.style.value,
                 (time.perf_counter() - started) * 1000)
