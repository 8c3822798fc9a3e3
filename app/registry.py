"""What is served: loaded model versions, and the registry snapshot requests resolve
against (`app.lifecycle` builds and swaps it)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
from pydantic import TypeAdapter, ValidationError

from app.batching import Batcher
from app.runtimes import Runner, Runtime, choose, load
from app.schemas import LayerSummary
from digit_contract import INPUT_SHAPE, LITERT_FILE, METADATA_FILE, Style

logger = logging.getLogger("digits.registry")


class ModelNotFound(LookupError):
    """No usable model of that style, version or label; the message names what is served."""

    def __init__(self, message: str, status: str):
        super().__init__(message)
        self.status = status  # "missing" (nothing on disk) or "failed" (broken on disk)


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """One model version ready to serve: its runner, version, device, runtime and metadata."""

    style: Style
    version: int
    device: str
    path: Path
    metadata: dict
    run: Runner
    runtime: Runtime = Runtime.tensorflow
    loaded_at: float = 0.0      # time.time() when it was ready
    load_seconds: float = 0.0   # loading and warming up
    # What the runner needs kept alive (the loaded SavedModel, or the interpreter).
    keep: object = dataclasses.field(default=None, repr=False, compare=False)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities [n, 10] for float32 images [n, 28, 28, 1]."""
        return self.run(images)

    @property
    def source(self) -> str:
        """The file it runs, relative to the model directory (no path of this machine)."""
        name = LITERT_FILE if self.runtime == Runtime.litert else "saved_model.pb"
        return f"{self.style.value}/{self.version}/{name}"


class ServedVersion:
    """A loaded version and its batch queue, with a count of the requests using it.

    A request holds it (`with served:`) from the moment it picks its version until its
    answer is built, so a version swapped out finishes every request that started on it:
    `retire` waits for the count to reach zero before it stops the queue.
    """

    def __init__(self, model: LoadedModel, batcher: Batcher):
        self.model = model
        self.batcher = batcher
        self.users = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def __enter__(self) -> ServedVersion:
        self.users += 1
        self._idle.clear()
        return self

    def __exit__(self, *exc_info) -> None:
        self.users -= 1
        if not self.users:
            self._idle.set()

    async def retire(self) -> None:
        await self._idle.wait()
        await self.batcher.stop()


@dataclasses.dataclass(frozen=True)
class StyleState:
    """What one style serves now, and why any other version on disk is not served."""

    style: Style
    served: dict[int, ServedVersion] = dataclasses.field(default_factory=dict)
    default: int | None = None               # the version requests naming none get
    labels: dict[str, int] = dataclasses.field(default_factory=dict)  # each to a served one
    on_disk: tuple[int, ...] = ()
    problems: dict[int, str] = dataclasses.field(default_factory=dict)  # version -> why not
    label_problem: str | None = None
    policy: str = "latest"

    @property
    def status(self) -> str:
        if self.served:
            return "ready"
        return "failed" if self.on_disk else "missing"

    def reason(self) -> str:
        if not self.on_disk:
            return ("No version directory in the model directory. Train one with: "
                    f"python -m training --style {self.style.value}")
        return "; ".join(f"version {v}: {why}" for v, why in sorted(self.problems.items())
                         ) or "no version chosen by the version policy could be loaded"


@dataclasses.dataclass(frozen=True)
class ModelRegistry:
    """One immutable snapshot of what is served. A reload builds a new one and swaps it in
    whole, so a request sees one consistent set of versions and labels."""

    styles: dict[Style, StyleState]

    @property
    def loaded(self) -> dict[Style, LoadedModel]:
        """Each ready style's default version."""
        return {style: state.served[state.default].model
                for style, state in self.styles.items() if state.served}

    def resolve(self, style: Style, version: int | None = None,
                label: str | None = None) -> ServedVersion:
        """The served version a request should use: `version`, `label`'s, or the default."""
        state = self.styles.get(style) or StyleState(style)
        if not state.served:
            served = ", ".join(s.value for s in self.loaded) or "none"
            raise ModelNotFound(f"Model '{style.value}' is not being served: "
                                f"{state.reason()}. Available models: {served}.",
                                status=state.status)
        if label is not None:
            if label not in state.labels:
                why = (f" ({state.label_problem})" if state.label_problem
                       and f"label {label!r}" in state.label_problem else "")
                raise ModelNotFound(
                    f"Model '{style.value}' has no label '{label[:40]}'{why}. Labels: "
                    f"{', '.join(sorted(state.labels)) or 'none'}.", status="missing")
            version = state.labels[label]
        if version is None:
            return state.served[state.default]
        if version not in state.served:
            why = state.problems.get(version)
            raise ModelNotFound(
                f"Version {version} of '{style.value}' is not being served"
                f"{': ' + why if why else ''}. Served versions: "
                f"{', '.join(map(str, sorted(state.served)))}.",
                status="failed" if why and version in state.on_disk else "missing")
        return state.served[version]


def load_version(path: Path, style: Style, version: int, device: str,
                 runtime: Runtime = Runtime.auto, threads: int = 1) -> LoadedModel:
    """Load one version directory and warm it up; any failure raises."""
    started = time.perf_counter()
    metadata = json.loads((path / METADATA_FILE).read_text())
    check_metadata(metadata)
    runtime = choose(runtime, device, path)
    run, keep = load(runtime, path, device, threads)
    model = LoadedModel(style=style, version=version, device=device, path=path,
                        metadata=metadata, run=run, runtime=runtime, keep=keep)
    warm_up(model)
    return dataclasses.replace(model, loaded_at=time.time(),
                               load_seconds=time.perf_counter() - started)


def check_metadata(metadata) -> None:
    """What the routes read from metadata.json must be there, with its types: a version
    whose file lacks it is a broken version (the next one down serves), not a 500 on
    /models later."""
    summary = metadata.get("summary") if isinstance(metadata, dict) else None
    if not isinstance(summary, dict):
        raise ValueError(f"{METADATA_FILE} has no model summary")
    wrong = [key for key, kind in SUMMARY_TYPES.items() if type(summary.get(key)) is not kind]
    if not isinstance(metadata.get("metrics", {}), dict):
        wrong.append("metrics")
    if wrong:
        raise ValueError(f"{METADATA_FILE}: {', '.join(wrong)} missing or of the wrong type")
    try:
        LAYERS.validate_python(summary["layers"])
    except ValidationError as error:
        raise ValueError(f"{METADATA_FILE}: malformed layer summary "
                         f"({error.error_count()} problems)") from None


SUMMARY_TYPES = {"text": str, "class_name": str, "layers": list, "total_params": int,
                 "trainable_params": int, "non_trainable_params": int}
LAYERS = TypeAdapter(list[LayerSummary])


def warm_up(model: LoadedModel) -> None:
    """Run the model once so the first real request does not pay for graph setup."""
    started = time.perf_counter()
    probabilities = model.predict(np.zeros((1, *INPUT_SHAPE), dtype=np.float32))
    if probabilities.shape != (1, 10) or not np.isfinite(probabilities).all():
        raise ValueError(f"warm-up returned shape {probabilities.shape}, not (1, 10), or "
                         "values that are not finite")
    logger.debug("warmed up %s in %.1f ms", model.style.value,
                 (time.perf_counter() - started) * 1000)
