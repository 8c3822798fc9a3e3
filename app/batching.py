"""Dynamic batching: images from concurrent requests share one model call.

One worker per model takes everything queued (up to `max_batch_size` images), waits at
most `timeout_s` for more, runs the model in its own thread, and hands each request its
slice of the result. While the model is busy, new requests queue up and form the next
batch, so under load batches grow by themselves and at low load nothing waits.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np


class QueueFull(RuntimeError):
    """The model's queue is at capacity; the caller should retry later (HTTP 503)."""

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclasses.dataclass
class _Job:
    images: np.ndarray
    future: asyncio.Future
    enqueued_at: float


BatchObserver = Callable[[int, float, float], None]
"""Called with (batch size, seconds the oldest job waited, seconds the model ran)."""


class Batcher:
    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], *, max_batch_size: int,
                 timeout_s: float, max_queue_images: int, name: str = "model",
                 observe: BatchObserver | None = None):
        self._predict = predict
        self.max_batch_size = max_batch_size
        self.timeout_s = timeout_s
        self.max_queue_images = max_queue_images
        self.name = name
        self._observe = observe
        self._jobs: collections.deque[_Job] = collections.deque()
        self._queued_images = 0
        self._wakeup = asyncio.Event()
        # One thread per model: TensorFlow parallelises each call itself, and a single
        # thread keeps batches in order and never runs two calls of one model at once.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"batch-{name}")
        self._worker: asyncio.Task | None = None

    @property
    def queued_images(self) -> int:
        return self._queued_images

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

    async def submit(self, images: np.ndarray) -> np.ndarray:
        """Queue `images` ([n, ...]) and wait for their outputs ([n, ...]), in order."""
        if self._queued_images + len(images) > self.max_queue_images:
            raise QueueFull(f"Model '{self.name}' has {self._queued_images} images queued "
                            f"(limit {self.max_queue_images}); retry shortly.")
        if len(images) == 0:
            return images[:0]
        loop = asyncio.get_running_loop()
        job = _Job(images, loop.create_future(), time.perf_counter())
        self._jobs.append(job)
        self._queued_images += len(images)
        self._wakeup.set()
        return await job.future

    async def _run(self) -> None:
        while True:
            if not self._jobs:
                self._wakeup.clear()
                await self._wakeup.wait()
            if self.timeout_s > 0 and self._queued_images < self.max_batch_size:
                await self._wait_for_more()
            jobs = self._take_batch()
            await self._execute(jobs)

    async def _wait_for_more(self) -> None:
        deadline = self._jobs[0].enqueued_at + self.timeout_s
        while self._queued_images < self.max_batch_size:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _take_batch(self) -> list[_Job]:
        """Jobs from the front of the queue, up to max_batch_size images (at least one job)."""
        jobs, count = [], 0
        while self._jobs:
            size = len(self._jobs[0].images)
            if jobs and count + size > self.max_batch_size:
                break
            job = self._jobs.popleft()
            self._queued_images -= size
            if job.future.cancelled():  # its client went away; don't spend the model on it
                continue
            jobs.append(job)
            count += size
        return jobs

    async def _execute(self, jobs: list[_Job]) -> None:
        if not jobs:
            return
        waited = time.perf_counter() - jobs[0].enqueued_at
        batch = jobs[0].images if len(jobs) == 1 else np.concatenate([j.images for j in jobs])
        loop = asyncio.get_running_loop()
        try:
            started = time.perf_counter()
            outputs = await loop.run_in_executor(self._executor, self._predict_in_chunks, batch)
            if self._observe is not None:
                self._observe(len(batch), waited, time.perf_counter() - started)
        except Exception as error:  # noqa: BLE001 - the model's failure goes to its callers
            if len(jobs) > 1:
                # Find the job that broke the batch: run each alone, so only it fails.
                for job in jobs:
                    await self._execute([job])
                return
            if not jobs[0].future.done():
                jobs[0].future.set_exception(error)
            return
        offset = 0
        for job in jobs:
            end = offset + len(job.images)
            if not job.future.done():
                job.future.set_result(outputs[offset:end])
            offset = end

    def _predict_in_chunks(self, batch: np.ndarray) -> np.ndarray:
        # A single request may carry more images than one model call should take.
        if len(batch) <= self.max_batch_size:
            return self._predict(batch)
        return np.concatenate([self._predict(batch[i: i + self.max_batch_size])
                               for i in range(0, len(batch), self.max_batch_size)])
