"""Model lifecycle: the model directory is read at start-up and then polled, and what it
holds goes live without a restart.

Each poll (`DIGITS_MODEL_POLL_SECONDS`) reads which version directories and labels each
style has. A version the policy (`app.versions`) wants and that is not loaded yet is loaded
and warmed up in a thread while the current versions keep serving; then the style's entry
of the registry snapshot is replaced in one assignment on the event loop. Versions left out
of the new snapshot are retired: their requests, in flight or queued, finish on them first
(`registry.ServedVersion`), and then their queue and model are released.

A version that fails to load or to warm up is logged, counted, shown in /models, and not
tried again until its files change; whatever served before keeps serving. When every
version directory of a style disappears, its last served version stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable
from pathlib import Path

from app.registry import LoadedModel, ModelRegistry, ServedVersion, StyleState, load_version
from app.runtimes import Runtime
from app.versions import DEFAULT_LABEL, VersionPolicy, read_labels
from digit_contract import Style, list_versions

logger = logging.getLogger("digits.lifecycle")

Fingerprint = tuple[tuple[str, int, int], ...]


@dataclasses.dataclass(frozen=True)
class StyleOnDisk:
    versions: tuple[int, ...]
    fingerprints: dict[int, Fingerprint]  # to notice a broken version being replaced
    labels: dict[str, int] | None         # None: the labels file is unreadable
    label_problem: str | None = None


def read_style_dir(style_dir: Path) -> StyleOnDisk:
    versions = tuple(list_versions(style_dir))
    try:
        labels, problem = read_labels(style_dir), None
    except (OSError, ValueError) as error:  # a JSON error is a ValueError too
        labels, problem = None, f"labels file ignored: {error}"
    return StyleOnDisk(versions, {v: fingerprint(style_dir / str(v)) for v in versions},
                       labels, problem)


MAX_FINGERPRINT_FILES = 10_000  # a version directory linked to "/" is not walked whole


def fingerprint(version_dir: Path) -> Fingerprint:
    """Each file's path, size and modification time: it changes when any file does."""
    found = []
    for root, _, files in os.walk(version_dir):
        if len(found) > MAX_FINGERPRINT_FILES:
            break
        for name in files:
            path = Path(root, name)
            with contextlib.suppress(OSError):  # removed while we walk
                stat = path.stat()
                found.append((str(path.relative_to(version_dir)), stat.st_size,
                              stat.st_mtime_ns))
    return tuple(sorted(found))


@dataclasses.dataclass
class LoadSettings:
    model_dir: Path
    device: str
    runtime: Runtime
    threads: int
    policies: dict[Style, VersionPolicy]


class ModelWatcher:
    """Keeps `service.registry` in step with the model directory.

    Args:
        serve: starts a batch queue for a loaded model (PredictionService.serve).
        publish: swaps in a new registry snapshot.
        on_load: called with (style, version, LoadedModel or the error) after each attempt.
        on_retire: called with each model taken out of service.
    """

    def __init__(self, settings: LoadSettings, current: Callable[[], ModelRegistry],
                 serve: Callable[[LoadedModel], ServedVersion],
                 publish: Callable[[ModelRegistry], None],
                 on_load: Callable[[Style, int, LoadedModel | Exception], None],
                 on_retire: Callable[[LoadedModel], None]):
        self.settings = settings
        self._current = current
        self._serve = serve
        self._publish = publish
        self._on_load = on_load
        self._on_retire = on_retire
        # version -> (the files it had, why it failed): not tried again until they change
        self._failures: dict[Style, dict[int, tuple[Fingerprint, str]]] = {
            style: {} for style in Style}
        # version -> the files it had when it was loaded
        self._files: dict[Style, dict[int, Fingerprint]] = {style: {} for style in Style}
        self._retiring: set[asyncio.Task] = set()
        self._lock = asyncio.Lock()  # one refresh at a time

    async def refresh(self) -> None:
        """Read the model directory once and bring every style in step with it."""
        async with self._lock:
            for style in Style:
                current = self._current().styles.get(style) or StyleState(style)
                try:
                    disk = await asyncio.to_thread(read_style_dir,
                                                   self.settings.model_dir / style.value)
                    state = await self._refresh_style(style, disk, current)
                except Exception:  # noqa: BLE001 - one style's trouble never stops the rest
                    logger.exception("reading %s's versions failed; it serves on as it was",
                                     style.value)
                    continue
                if state != current:
                    registry = self._current()
                    self._publish(ModelRegistry({**registry.styles, style: state}))
                    self._retire([served for v, served in current.served.items()
                                  if state.served.get(v) is not served])
                    self._log_change(current, state)

    async def run(self, poll_seconds: float) -> None:
        """Refresh every `poll_seconds` until cancelled; a failed poll is logged, not fatal."""
        while True:
            await asyncio.sleep(poll_seconds)
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - the service must outlive a bad poll
                logger.exception("polling the model directory failed")

    async def close(self) -> None:
        """Wait for retired versions to finish their requests and stop."""
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    async def _refresh_style(self, style: Style, disk: StyleOnDisk,
                             current: StyleState) -> StyleState:
        failures = self._failures[style]
        for version in [v for v, (files, _) in failures.items()
                        if disk.fingerprints.get(v) != files]:
            del failures[version]  # its files changed (or went): worth another try
        loaded_files = self._files[style]
        candidates = dict(current.served)
        # Served versions whose files changed since they were loaded (replaced in place,
        # or copied in without a rename): loaded again, and the old model serves until the
        # new one is ready, or on if it fails.
        stale = {v for v in candidates if disk.fingerprints.get(v, loaded_files.get(v))
                 != loaded_files.get(v)}

        async def usable(version: int) -> bool:
            if version not in disk.versions:
                return False
            if version in candidates and version not in stale:
                return True
            if version in failures:
                return version in candidates
            model = await self._load(style, version, disk.fingerprints[version])
            if model is None:
                return version in candidates
            candidates[version] = self._serve(model)
            loaded_files[version] = disk.fingerprints[version]
            stale.discard(version)
            return True

        policy = self.settings.policies.get(style, VersionPolicy())
        keep = []
        if policy.latest is not None:
            for version in reversed(disk.versions):
                if len(keep) == policy.latest:
                    break
                if await usable(version):
                    keep.append(version)
        else:
            keep = [v for v in policy.specific if await usable(v)]
        labels, label_problems = await self._labels(disk, current, usable)
        keep += labels.values()
        if not keep and current.served:
            # Nothing on disk can serve: the last version served stays rather than none.
            keep = [current.default]
        served = {v: candidates[v] for v in sorted(set(keep))}
        # Loaded this time but not kept (a label that moved on meanwhile): never used.
        self._retire([s for v, s in candidates.items()
                      if v not in served and s is not current.served.get(v)])
        problems = {v: why for v, (_, why) in failures.items() if v in disk.versions}
        if policy.latest is None:
            problems.update({v: "not in the model directory" for v in policy.specific
                             if v not in disk.versions})
        default = labels.get(DEFAULT_LABEL, max(served, default=None))
        return StyleState(style, served=served, default=default, labels=labels,
                          on_disk=disk.versions, problems=problems,
                          label_problem="; ".join(label_problems) or None,
                          policy=policy.describe())

    @staticmethod
    async def _labels(disk: StyleOnDisk, current: StyleState, usable
                      ) -> tuple[dict[str, int], list[str]]:
        """The labels to serve, each to a version that can serve, and what is wrong with
        the others. A label moved to a version that cannot serve stays where it was."""
        wanted = current.labels if disk.labels is None else disk.labels
        problems = [disk.label_problem] if disk.label_problem else []
        labels = {}
        for label, version in wanted.items():
            if await usable(version):
                labels[label] = version
                continue
            before = current.labels.get(label)
            if before is not None and before != version and await usable(before):
                labels[label] = before
                problems.append(f"label {label!r}: version {version} cannot be served; "
                                f"it stays on version {before}")
            else:
                problems.append(f"label {label!r}: version {version} cannot be served")
        return labels, problems

    async def _load(self, style: Style, version: int,
                    files: Fingerprint) -> LoadedModel | None:
        path = self.settings.model_dir / style.value / str(version)
        try:
            model = await asyncio.to_thread(load_version, path, style, version,
                                            self.settings.device, self.settings.runtime,
                                            self.settings.threads)
        except Exception as error:  # noqa: BLE001 - any failure means "not this version"
            # The public reason names the error's kind only: its message may hold paths
            # of this machine, which the log keeps.
            self._failures[style][version] = (
                files, f"failed to load: {error.__class__.__name__} (see the log)")
            logger.error("cannot load %s version %d from %s: %s", style.value, version,
                         path, error)
            self._on_load(style, version, error)
            return None
        logger.info("loaded %s version %d on %s with %s in %.2f s", style.value, version,
                    model.device, model.runtime.value, model.load_seconds)
        self._on_load(style, version, model)
        return model

    def _retire(self, versions: list[ServedVersion]) -> None:
        for served in versions:
            task = asyncio.get_running_loop().create_task(self._retire_one(served))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def _retire_one(self, served: ServedVersion) -> None:
        await served.retire()
        model = served.model
        state = self._current().styles.get(model.style)
        if not (state and model.version in state.served):  # not loaded again meanwhile
            self._on_retire(model)
        logger.info("unloaded %s version %d", model.style.value, model.version)

    @staticmethod
    def _log_change(before: StyleState, after: StyleState) -> None:
        if (before.default, sorted(before.served), before.labels) != (
                after.default, sorted(after.served), after.labels):
            logger.info("%s now serves versions %s (default %s, labels %s)",
                        after.style.value, sorted(after.served) or "none", after.default,
                        after.labels or "none")
        if after.label_problem and after.label_problem != before.label_problem:
            logger.error("%s: %s", after.style.value, after.label_problem)
