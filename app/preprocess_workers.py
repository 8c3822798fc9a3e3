"""Preprocessing in worker processes.

The workers import only `app.preprocessing` (Pillow and numpy): the function they run
lives there, and `python -m app` keeps its heavy imports inside `main()`, since a spawned
worker re-imports the parent's main module.

Decoding and normalising an image is mostly Python and small numpy calls, which hold the
GIL: in the server process a big batch would compete with the event loop for it. Worker
processes run big batches truly in parallel, and a decoder crash takes down a worker, not
the service. Each such batch costs one round trip per worker, not one per image.
"""

from __future__ import annotations

import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from app.preprocessing import (
    ImageError,
    ImageTooLarge,
    prepare_images,
    set_pillow_pixel_limit,
)
from app.uploads import Upload, UploadError

logger = logging.getLogger("digits.preprocess")

# Handing work to a process costs a few hundred microseconds of the server's own time
# (pickling, pipes, the pool's helper threads), and small images are prepared a whole batch
# at a time faster than that. The workers therefore take only batches with this many encoded
# bytes or more: photos, whose decoding dominates.
POOL_MIN_BYTES = 256 * 1024


class PreprocessWorkers:
    """Turns the uploads of a batch of requests into digits, one array or error per request.

    Args:
        processes: worker processes; 0 preprocesses in the calling thread instead.
        max_pixels: the largest width x height decoded.
        min_pool_bytes: batches with fewer encoded bytes are prepared in the calling thread
            (default POOL_MIN_BYTES).
    """

    def __init__(self, processes: int, max_pixels: int, min_pool_bytes: int | None = None):
        self.processes = processes
        self.max_pixels = max_pixels
        self.min_pool_bytes = POOL_MIN_BYTES if min_pool_bytes is None else min_pool_bytes
        self._pool: ProcessPoolExecutor | None = None

    def start(self) -> None:
        set_pillow_pixel_limit(self.max_pixels)
        if self.processes > 0:
            self._pool = self._new_pool()
            # Start every worker now, so the first requests don't wait for them to spawn.
            warm = [self._pool.submit(prepare_images, [], self.max_pixels)
                    for _ in range(self.processes)]
            for future in warm:
                future.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __call__(self, requests: list[list[Upload]]) -> list[np.ndarray | UploadError]:
        blobs = [upload.data for uploads in requests for upload in uploads]
        results = self._prepare(blobs)
        outcomes: list[np.ndarray | UploadError] = []
        start = 0
        for uploads in requests:
            mine = results[start: start + len(uploads)]
            start += len(uploads)
            failure = next(((u, r) for u, r in zip(uploads, mine, strict=True)
                            if isinstance(r, ImageError)), None)
            outcomes.append(as_upload_error(*failure) if failure else np.stack(mine))
        return outcomes

    def _prepare(self, blobs: list[bytes]) -> list[np.ndarray | ImageError]:
        if self._pool is None or sum(map(len, blobs)) < self.min_pool_bytes:
            return prepare_images(blobs, self.max_pixels)
        chunks = np.array_split(np.arange(len(blobs)), min(self.processes, len(blobs)))
        futures = [self._pool.submit(prepare_images, [blobs[i] for i in chunk], self.max_pixels)
                   for chunk in chunks]
        try:
            return [result for future in futures for result in future.result()]
        except BrokenProcessPool:
            # A worker died (a decoder crash, the OOM killer): replace the pool and do this
            # batch here, so the requests still get their answers.
            logger.error("a preprocessing worker died; restarting the pool")
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            return prepare_images(blobs, self.max_pixels)

    def _new_pool(self) -> ProcessPoolExecutor:
        # "spawn": forking a process that has started TensorFlow's threads is unsafe.
        return ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=set_pillow_pixel_limit,
                                   initargs=(self.max_pixels,))


def as_upload_error(upload: Upload, error: ImageError) -> UploadError:
    status = 413 if isinstance(error, ImageTooLarge) else 400
    return UploadError(status, f"{upload.label}: {error}")
