"""Dynamic batching: images from concurrent requests share one model call.

One worker per model takes everything queued (up to `max_batch_size` images), then, in
its own thread, prepares each request's images and runs the model once for all of them,
and hands each request its slice of the result. While the model is busy new requests
queue up and form the next batch, so batches grow with load by themselves.

Before taking a batch it may wait, at most `timeout_s` after the oldest request arrived,
for as many requests as were in the service during the last batch: under steady load the
clients it just answered come straight back, and waiting for them makes the batches
fuller and the model calls fewer (each call costs a few hundred µs of CPU on top of its
images). A lone client is never held up: after a batch of one with nothing behind it, one
request is enough.

Preparing (decoding) inside the batch thread costs one thread hand-off per batch instead
of one per request, and keeps that CPU work off the event loop. A batch that is cheap to
prepare (`cheap`: a few small, already-inspected images, a few ms) is prepared on the
event loop instead, and only the model call goes to the thread: two threads taking turns
at the GIL through a hundred small numpy calls cost more than the work itself (about 4% of
single-image throughput).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np


class QueueFull(RuntimeError):
    """The model's queue is at capacity; the caller should retry later (HTTP 503)."""

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclasses.dataclass(frozen=True)
class Partial:
    """A request some of whose items could not be prepared: the rest go to the model, and
    the failures ride along to the answer, by position in the request."""

    inputs: np.ndarray              # the items that could be prepared, in request order
    errors: dict[int, Exception]    # position in the request -> why that item failed

    def __len__(self) -> int:
        return len(self.inputs) + len(self.errors)


@dataclasses.dataclass(frozen=True)
class BatchResult:
    inputs: np.ndarray   # what the model was given for this request: [m, ...]
    outputs: np.ndarray  # what it answered: [m, ...]
    # Items that never reached the model, by position in the request (see Partial).
    errors: dict[int, Exception] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class _Job:
    payload: Any
    size: int
    future: asyncio.Future
    enqueued_at: float


BatchObserver = Callable[[int, float, float], None]
"""Called with (images in the model call, seconds the oldest job waited, seconds it ran)."""


def _inputs_of(outcome: np.ndarray | Partial) -> np.ndarray:
    return outcome.inputs if isinstance(outcome, Partial) else outcome


def _identity(payloads: list[Any]) -> list[Any]:
    return payloads


def _never(payloads: list[Any]) -> bool:
    return False


def _concatenate(inputs: list[np.ndarray]) -> np.ndarray:
    return inputs[0] if len(inputs) == 1 else np.concatenate(inputs)


class Batcher:
    """Queues requests for one model and runs them in batches.

    Args:
        predict: the model: an array of n inputs -> an array of n outputs.
        prepare: turns the payloads of a batch's requests into their model inputs, one
            array ([size, ...]), Partial or exception per request, in order; runs in the
            batch thread, and an exception fails that request alone.
        cheap: whether preparing these payloads is cheap enough (a few ms at most) to do
            on the event loop rather than in the batch thread.
        combine: the model's batch from the prepared inputs of its requests (by default,
            concatenated).
    """

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], *, max_batch_size: int,
                 timeout_s: float, max_queue_images: int,
                 prepare: Callable[[list[Any]], list[np.ndarray | Exception]] = _identity,
                 cheap: Callable[[list[Any]], bool] = _never,
                 combine: Callable[[list[np.ndarray]], np.ndarray] = _concatenate,
                 name: str = "model",
                 observe: BatchObserver | None = None):
        self._predict = predict
        self._prepare = prepare
        self._cheap = cheap
        self._combine = combine
        self.max_batch_size = max_batch_size
        self.timeout_s = timeout_s
        self.max_queue_images = max_queue_images
        self.name = name
        self._observe = observe
        self._jobs: collections.deque[_Job] = collections.deque()
        self._queued_images = 0
        # Requests in the service during the last batch (see _enough_queued); before the
        # first batch, a full one.
        self._expected_requests = max_batch_size
        self._wakeup = asyncio.Event()
        # One thread per model: TensorFlow parallelises each call itself, and a single
        # thread keeps batches in order and never runs two calls of one model at once.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"batch-{name}")
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._worker = loop.create_task(self._run(), name=f"batch-{self.name}")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        for job in self._jobs:
            if not job.future.done():
                job.future.set_exception(QueueFull(f"{self.name} is shutting down"))
        self._jobs.clear()
        self._executor.shutdown(wait=True)

    async def submit(self, payload: Any, size: int | None = None) -> BatchResult:
        """Queue one request (`size` images; default len(payload)) and wait for its result."""
        size = len(payload) if size is None else size
        if self._queued_images + size > self.max_queue_images:
            raise QueueFull(f"Model '{self.name}' has {self._queued_images} images queued "
                            f"(limit {self.max_queue_images}); retry shortly.")
        job = _Job(payload, size, asyncio.get_running_loop().create_future(),
                   time.perf_counter())
        self._jobs.append(job)
        self._queued_images += size
        self._wakeup.set()
        return await job.future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._jobs:
                self._wakeup.clear()
                await self._wakeup.wait()
            if self.timeout_s > 0 and not self._enough_queued():
                await self._wait_for_more()
            jobs = self._take_batch()
            if not jobs:
                continue
            waited = time.perf_counter() - jobs[0].enqueued_at
            payloads = [job.payload for job in jobs]
            if self._cheap(payloads):
                outcomes = await loop.run_in_executor(
                    self._executor, self._run_model, self._prepare_each(payloads), waited)
            else:
                outcomes = await loop.run_in_executor(
                    self._executor, self._prepare_and_run, payloads, waited)
            # The clients just answered, plus those that queued meanwhile: the load to expect.
            self._expected_requests = len(jobs) + len(self._jobs)
            for job, outcome in zip(jobs, outcomes, strict=True):
                if job.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    job.future.set_exception(outcome)
                else:
                    job.future.set_result(outcome)

    def _enough_queued(self) -> bool:
        """A full batch, or as many requests as were in the service during the last batch.

        Under steady load the clients just answered come back, and waiting for them makes
        the batches full; a lone client never waits, since after a batch of one with
        nothing queued behind it, one request is enough.
        """
        return (self._queued_images >= self.max_batch_size
                or len(self._jobs) >= self._expected_requests)

    async def _wait_for_more(self) -> None:
        remaining = self._jobs[0].enqueued_at + self.timeout_s - time.perf_counter()
        if remaining <= 0:
            return
        # One timer for the whole wait: each request that arrives meanwhile wakes this loop,
        # and a fresh `asyncio.wait_for` per wake-up (a task and a timer each) cost more
        # than the batching saved.
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            self._wakeup.set()

        timer = asyncio.get_running_loop().call_later(remaining, expire)
        try:
            while not expired and not self._enough_queued():
                self._wakeup.clear()
                await self._wakeup.wait()
        finally:
            timer.cancel()

    def _take_batch(self) -> list[_Job]:
        """Jobs from the front of the queue, up to max_batch_size images (at least one job)."""
        jobs, count = [], 0
        while self._jobs:
            if jobs and count + self._jobs[0].size > self.max_batch_size:
                break
            job = self._jobs.popleft()
            self._queued_images -= job.size
            if job.future.cancelled():  # its client went away; don't spend the model on it
                continue
            jobs.append(job)
            count += job.size
        return jobs

    # --- in the batch thread (preparing: on the event loop too, when cheap) -----------------

    def _prepare_each(self, payloads: list[Any]) -> list[Any]:
        try:
            return list(self._prepare(payloads))
        except Exception:  # noqa: BLE001 - preparing failed as a whole: find whose fault
            return [self._prepare_alone(payload) for payload in payloads]

    def _prepare_and_run(self, payloads: list[Any],
                         waited: float) -> list[BatchResult | Exception]:
        return self._run_model(self._prepare_each(payloads), waited)

    def _run_model(self, outcomes: list[Any], waited: float) -> list[BatchResult | Exception]:
        """The model on every prepared request's inputs at once; each gets its slice."""
        ready = [i for i, outcome in enumerate(outcomes) if not isinstance(outcome, Exception)]
        if not ready:
            return outcomes
        errors = {i: outcomes[i].errors for i in ready if isinstance(outcomes[i], Partial)}
        inputs = [_inputs_of(outcomes[i]) for i in ready]
        batch = self._combine(inputs)
        started = time.perf_counter()
        try:
            outputs = self._predict_in_chunks(batch)
        except Exception as error:  # noqa: BLE001 - the model's failure goes to its callers
            if len(ready) == 1:
                outcomes[ready[0]] = error
                return outcomes
            # Find the request that broke the batch: run each alone, so only it fails.
            for i, job_inputs in zip(ready, inputs, strict=True):
                outcomes[i] = self._predict_alone(job_inputs, errors.get(i, {}))
            return outcomes
        if self._observe is not None:
            self._observe(len(batch), waited, time.perf_counter() - started)
        offset = 0
        for i, job_inputs in zip(ready, inputs, strict=True):
            end = offset + len(job_inputs)
            outcomes[i] = BatchResult(job_inputs, outputs[offset:end], errors.get(i, {}))
            offset = end
        return outcomes

    def _prepare_alone(self, payload: Any) -> Any:
        try:
            [outcome] = self._prepare([payload])
        except Exception as error:  # noqa: BLE001 - this request's failure, and only its
            return error
        return outcome

    def _predict_alone(self, inputs: np.ndarray,
                       errors: dict[int, Exception]) -> BatchResult | Exception:
        try:
            return BatchResult(inputs, self._predict_in_chunks(self._combine([inputs])), errors)
        except Exception as error:  # noqa: BLE001
            return error

    def _predict_in_chunks(self, batch: np.ndarray) -> np.ndarray:
        # A single request may carry more images than one model call should take.
        if len(batch) <= self.max_batch_size:
            return self._predict(batch)
        return np.concatenate([self._predict(batch[i: i + self.max_batch_size])
                               for i in range(0, len(batch), self.max_batch_size)])
