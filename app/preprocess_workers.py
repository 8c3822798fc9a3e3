"""Preparing a batch's images: plain PNGs here, everything else in sandboxed workers.

Each image's header is inspected first (`app.decoding.inspect`: cheap, and it refuses
what is over the limits). A `simple` image, a small plain PNG whose every chunk was
checked, is then decoded in the calling thread, where a batch of them is normalised as one
stack. Every other image is decoded in a worker process that has a cap on its address space
(RLIMIT_AS) and a time limit per image; a worker that dies or overruns is killed and
replaced, and the image it was on is answered 400 or 413. No image is ever retried in the
server process, and a worker's failure reaches only the request whose image it was on:
workers take one request's images at a time.

The workers are forked from a fork server that imports only the decoding modules
(Pillow, OpenCV, numpy): about 35 MB each instead of the server's TensorFlow, and a
replacement starts in milliseconds.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import dataclasses
import hashlib
import logging
import multiprocessing
import os
import queue
import resource
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection, wait

import numpy as np

from app import allocator
from app.batching import Partial, QueueFull
from app.decoding import (
    DecodeLimits,
    ImageError,
    ImageHeader,
    ImageTooLarge,
    inspect,
    inspect_simple,
    set_pillow_pixel_limit,
)
from app.preprocessing import log_rejection, prepare_images, prepare_one
from app.uploads import Upload, UploadError

logger = logging.getLogger("digits.preprocess")


class RequestWide(ImageError):
    """An error that is the whole request's, not one image's: it fails the request."""


class DecodersBusy(RequestWide):
    """No decoder process came free in time (HTTP 503: retry shortly)."""

    status_code = 503


class RequestTooLarge(RequestWide, ImageTooLarge):
    """A limit on the whole request (its total pixels, its decoding time) is broken."""


class NotDecoded(ImageError):
    """An image never tried: its decoder was stopped twice by other images of its request
    (HTTP 503 for that image: it may well be fine on its own)."""

    status_code = 503

_STARTED = "started"  # a worker's acknowledgement that it has taken a task

DECODER_NICENESS = 10

# How often a waiting batch looks at its workers' CPU time.
POLL_S = 0.02
# A worker may take this many times its CPU limit in wall time on one image (one that is
# stuck without using the CPU is stopped too).
WALL_CLOCK_FACTOR = 10
# A worker's clocks start when it acknowledges its task. Before that it may still be
# starting (a replacement forked moments ago runs multiprocessing's start-up, which can take
# a good part of a second of CPU on a loaded machine): none of that is the image's. Only a
# worker that never acknowledges is stopped, after this long.
START_TIMEOUT_S = 10.0
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

try:
    _LIBC = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:  # not glibc: no prctl
    _LIBC = None

# A request of simple PNGs of at most this many bytes and pixels in all is decoded in its
# batch; others are decoded before they join it. Pixels, not only bytes, because a PNG of a
# blank page compresses to almost nothing: 95 canvases of 1024 x 1024 pixels came to 2 KB
# each and cost the batch thread 0.9 s, which every request for that model then waited
# behind. A megapixel costs it about 7 ms.
SIMPLE_REQUEST_BYTES = 256 * 1024
SIMPLE_REQUEST_PIXELS = 1 << 20

# A batch of at most this many plain PNGs (OpenCV decodes them), of at most this many
# pixels and image sizes in all, is cheap enough to prepare on the event loop: a few ms
# (see app.batching); 16 single-dot digits, the costliest to normalise, take 2.5 ms. Each
# size is a stack of its own, about half a millisecond whatever its pixels: 32 one-row
# images of 32 widths took 20 ms.
CHEAP_BATCH_IMAGES = 16
CHEAP_BATCH_PIXELS = 1 << 16
CHEAP_BATCH_SIZES = 2


@dataclasses.dataclass(frozen=True)
class WorkerLimits:
    processes: int = 2
    """Worker processes; 0 decodes everything in the calling thread (no sandbox)."""
    memory_bytes: int = 512 * 2**20
    """Address space a worker may add to what it has when it starts."""
    timeout_s: float = 1.0
    """Most CPU seconds a worker may spend on one image."""
    request_timeout_s: float = 1.0
    """Most CPU seconds the workers may spend on all the images of one request, or what
    its images are allowed by their size if that is more: 30 ms each and 0.3 µs per pixel
    (250 photos of a hundred thousand pixels need about 2 s, twice that when the cores are
    shared; 39 crafted TIFFs costing 0.3 s each were a hostile 12 s)."""
    image_allowance_s: float = 0.03
    pixel_allowance_s: float = 3e-7
    queue_timeout_s: float = 2.0
    """Longest a request may wait for a free worker before it is refused (503)."""


@dataclasses.dataclass
class _Task:
    request: int            # which request of the batch
    positions: list[int]    # which of its images
    blobs: list[bytes]
    pixels: int = 0         # their headers' pixels, together
    retried: bool = False   # sent again after a worker died before taking it
    first: int = 0          # where blobs[0]'s answer goes in the task's answers
    resumed: bool = False   # the rest of a task whose worker an image stopped


@dataclasses.dataclass
class _Running:
    task: _Task
    task_cpu: float         # the worker's CPU seconds when it was handed the task
    image_wall: float       # time.monotonic() when its current image began
    image_cpu: float = 0.0  # its CPU seconds then
    started: bool = False
    done: int = 0           # images answered so far

    def __post_init__(self) -> None:
        self.image_cpu = self.task_cpu

    def image_started(self, cpu: float) -> None:
        self.image_cpu, self.image_wall = cpu, time.monotonic()


class DecoderPool:
    """Worker processes that decode and normalise images, one task (a request's images)
    at a time each, under a memory cap and a per-image time limit.

    Thread-safe: each model's batch thread runs its tasks on whichever workers are idle.

    Args:
        decode_limits: the header limits the workers check again.
        limits: worker count, memory cap and time limit.
        on_restart: called with "crashed" or "timeout" each time a worker is replaced.
        work: what a worker does with each image (tests script crashes and hangs with it);
            a module-level function, since the workers import it.
    """

    def __init__(self, decode_limits: DecodeLimits, limits: WorkerLimits,
                 on_restart: Callable[[str], None] = lambda reason: None,
                 work: Callable[[bytes, DecodeLimits], np.ndarray | ImageError] = prepare_one):
        self.decode_limits = decode_limits
        self.limits = limits
        self._on_restart = on_restart
        self._work = work
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(["app.preprocess_workers"])
        # Last in, first out: the worker that just finished is warm (caches, pages), and
        # taking it again halves the cost of a small image compared with alternating.
        self._idle: queue.LifoQueue[_Worker] = queue.LifoQueue()
        self._workers: set[_Worker] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        workers = [self._new_worker() for _ in range(self.limits.processes)]
        for worker in workers:  # each acknowledges an empty task once it is up
            worker.conn.send([])
        for worker in workers:
            if not worker.conn.poll(30) or worker.conn.recv() != _STARTED:
                raise RuntimeError("a preprocessing worker did not start")
            self._idle.put(worker)

    def close(self) -> None:
        with self._lock:
            workers, self._workers = list(self._workers), set()
        for worker in workers:
            worker.stop()

    @property
    def pids(self) -> list[int]:
        with self._lock:
            return [worker.process.pid for worker in self._workers]

    def run(self, tasks: list[_Task]) -> list[list[np.ndarray | ImageError]]:
        """Each task's results, in order: a digit or the ImageError of each image.

        The tasks are one request's. Their limits are CPU time, not wall time, so that
        workers starved by a busy machine (they run at a lower priority) are not taken for
        expensive images: each image gets `timeout_s` of CPU, all of them together
        `request_timeout_s`; and each image WALL_CLOCK_FACTOR times `timeout_s` of wall
        time, for a worker stuck without using the CPU.
        """
        results: list[list] = [[None] * len(task.blobs) for task in tasks]
        by_task = {id(task): answer for task, answer in zip(tasks, results, strict=True)}
        waiting = collections.deque(tasks)
        running: dict[_Worker, _Running] = {}
        queued_until = time.monotonic() + self.limits.queue_timeout_s
        spent = 0.0  # CPU seconds of this request's finished tasks
        budget = max(self.limits.request_timeout_s, sum(
            self.limits.image_allowance_s * len(task.blobs)
            + self.limits.pixel_allowance_s * task.pixels for task in tasks))
        try:
            while waiting or running:
                while waiting:
                    worker = self._checkout(None if running else queued_until)
                    if worker is None:
                        if not running:  # no worker came free in time
                            self._fail_waiting(waiting, by_task, DecodersBusy(
                                "Every decoder process is busy; retry shortly."))
                        break
                    task = waiting.popleft()
                    if not worker.send(task.blobs):  # dead before it took the task
                        self._replace(worker, "crashed", "while idle")
                        waiting.appendleft(task)
                        continue
                    running[worker] = _Running(task, worker.cpu_seconds(), time.monotonic())
                if running:
                    spent += self._collect(running, waiting, by_task, spent, budget)
                    if spent > budget:
                        self._fail_waiting(waiting, by_task, self._out_of_time(budget))
        finally:
            for worker in running:  # only if this thread itself was interrupted
                self._replace(worker, "crashed", "abandoned by its batch")
        return results

    @staticmethod
    def _out_of_time(budget: float) -> ImageTooLarge:
        return RequestTooLarge(f"The request's images took over {budget:g} s of CPU to decode; "
                             "send fewer or smaller images.")

    def _collect(self, running: dict[_Worker, _Running], waiting: collections.deque,
                 by_task: dict[int, list], spent: float, budget: float) -> float:
        """Wait for the next messages (or the next look at the clocks) and act on them;
        returns the CPU seconds of the tasks that ended."""
        ended = 0.0
        by_conn = {worker.conn: worker for worker in running}
        for conn in wait(list(by_conn), timeout=POLL_S):
            worker = by_conn[conn]
            state = running[worker]
            try:
                message = conn.recv()
            except (EOFError, OSError):
                del running[worker]
                if not state.started and not state.task.retried:
                    # It died before taking the task (killed while idle, say): the task
                    # itself is not to blame, so a fresh worker gets it once more.
                    self._replace(worker, "crashed", "before taking its task")
                    state.task.retried = True
                    waiting.appendleft(state.task)
                else:
                    self._replace(worker, "crashed", self._fail(
                        state, by_task, waiting, ImageError(
                            "The decoder crashed on this image; it is corrupt or malicious.")))
                continue
            state.image_started(worker.cpu_seconds())
            if isinstance(message, str):  # _STARTED: from now on its time is the task's
                state.started, state.task_cpu = True, state.image_cpu
            else:
                by_task[id(state.task)][state.task.first + state.done] = message
                state.done += 1
            if state.started and state.done == len(state.task.blobs):
                ended += worker.cpu_seconds() - state.task_cpu
                del running[worker]
                self._idle.put(worker)
        return ended + self._enforce_limits(running, waiting, by_task, spent + ended, budget)

    def _enforce_limits(self, running: dict[_Worker, _Running], waiting: collections.deque,
                        by_task: dict[int, list], spent: float, budget: float) -> float:
        """Stop the workers over a limit; returns the CPU seconds their tasks had used."""
        now = time.monotonic()
        cpu = {worker: worker.cpu_seconds() for worker in running}
        request_cpu = spent + sum(cpu[w] - state.task_cpu for w, state in running.items()
                                  if state.started)
        used = 0.0
        for worker, state in list(running.items()):
            if not state.started:
                if now - state.image_wall <= START_TIMEOUT_S:
                    continue
                del running[worker]
                self._replace(worker, "timeout", "before taking its task")
                if state.task.retried:
                    self._fail_waiting(collections.deque([state.task]), by_task, DecodersBusy(
                        "No decoder process could start; retry shortly."))
                else:
                    state.task.retried = True
                    waiting.appendleft(state.task)
                continue
            if request_cpu > budget:
                error = self._out_of_time(budget)
            elif (cpu[worker] - state.image_cpu > self.limits.timeout_s
                  or now - state.image_wall > WALL_CLOCK_FACTOR * self.limits.timeout_s):
                error = ImageTooLarge(f"The image took over {self.limits.timeout_s:g} s of "
                                      "CPU to decode.")
            else:
                continue
            del running[worker]
            used += cpu[worker] - state.task_cpu
            self._replace(worker, "timeout", self._fail(state, by_task, waiting, error))
        return used

    @staticmethod
    def _fail_waiting(waiting: collections.deque, by_task: dict[int, list],
                      error: ImageError) -> None:
        while waiting:
            task = waiting.popleft()
            answers = by_task[id(task)]
            answers[task.first:] = [error] * (len(answers) - task.first)

    def _fail(self, state: _Running, by_task: dict[int, list], waiting: collections.deque,
              error: ImageError) -> str:
        """The image a worker was on gets `error`. The rest of its task go to a fresh
        worker once; if an image stops that one too, they are not decoded (so a request
        stops at most two decoders per task). Says which image."""
        task, answers = state.task, by_task[id(state.task)]
        at = task.first + state.done
        answers[at] = error
        rest = _Task(task.request, task.positions[state.done + 1:], task.blobs[state.done + 1:],
                     retried=True, first=at + 1, resumed=True)
        if rest.blobs and not task.resumed and not isinstance(error, RequestWide):
            by_task[id(rest)] = answers
            waiting.append(rest)
        else:
            for i in range(at + 1, len(answers)):
                answers[i] = NotDecoded(
                    "Not decoded: other images of this request stopped its decoder twice; "
                    "send this one again on its own.")
        return (f"on image #{task.positions[state.done] + 1} of a request, sha256 "
                f"{hashlib.sha256(task.blobs[state.done]).hexdigest()}")

    def _checkout(self, until: float | None) -> _Worker | None:
        """An idle worker: at once (until=None), or waiting for one until `until`."""
        try:
            if until is None:
                return self._idle.get(block=False)
            return self._idle.get(timeout=max(0.0, until - time.monotonic()))
        except queue.Empty:
            return None

    def _replace(self, worker: _Worker, reason: str, detail: str) -> None:
        """Kill a worker and start another; one log line and one count per replacement."""
        logger.warning("decoder process %d %s %s; starting another", worker.process.pid,
                       "crashed" if reason == "crashed" else "ran out of time", detail)
        worker.kill()
        with self._lock:
            self._workers.discard(worker)
        self._on_restart(reason)
        self._idle.put(self._new_worker())

    def _new_worker(self) -> _Worker:
        worker = _Worker(self._context, (self._work, self.decode_limits,
                                         self.limits.memory_bytes))
        with self._lock:
            self._workers.add(worker)
        return worker


class _Worker:
    """One worker process and the parent's end of its pipe."""

    def __init__(self, context, serve_args: tuple):
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(target=_serve, args=(child_conn, *serve_args),
                                       name="digits-decoder", daemon=True)
        self.process.start()
        child_conn.close()  # else its death would never show as end-of-file here

    def cpu_seconds(self) -> float:
        """CPU time the worker has used (user and system), from /proc."""
        try:
            with open(f"/proc/{self.process.pid}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS

    def send(self, blobs: list[bytes]) -> bool:
        """Hand over a task; False if the worker is already gone."""
        if not self.process.is_alive():
            return False
        try:
            self.conn.send(blobs)
        except (BrokenPipeError, OSError):
            return False
        return True

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, AttributeError):
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.join(timeout=5)
        self.conn.close()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(None)
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.kill()
        self.conn.close()


def _serve(conn: Connection, work: Callable, decode_limits: DecodeLimits,
           memory_bytes: int) -> None:
    """A worker's loop: take a task (a list of encoded images), acknowledge it, then send
    back each image's digit or ImageError as soon as it is ready."""
    _die_with_parent()
    _cap_address_space(memory_bytes)
    # Below the server processes: when the cores are scarce, answering requests whose
    # images are ready comes before decoding expensive ones.
    os.nice(DECODER_NICENESS)
    set_pillow_pixel_limit(decode_limits.max_pixels)
    while (blobs := _receive(conn)) is not None:
        conn.send(_STARTED)
        for data in blobs:
            conn.send(work(data, decode_limits))
        _return_freed_memory()


def _receive(conn: Connection) -> list[bytes] | None:
    try:
        return conn.recv()
    except (EOFError, OSError):
        return None


def _cap_address_space(extra_bytes: int) -> None:
    """Let this process map at most `extra_bytes` beyond what it has now: a decoder that
    asks for more gets a MemoryError (or crashes), never the machine's memory."""
    with open("/proc/self/status") as status:
        now_kib = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
    limit = now_kib * 1024 + extra_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))


def _return_freed_memory() -> None:
    """Hand the heap's free pages back to the system: a large image leaves the worker's
    heap large, and glibc keeps it otherwise."""
    allocator.trim()


def _die_with_parent() -> None:
    """Ask Linux to kill this worker when the process that forked it exits."""
    with contextlib.suppress(OSError, AttributeError):
        _LIBC.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class PreprocessWorkers:
    """Turns the uploads of a batch of requests into digits, one array or error per request.

    Args:
        decode_limits: pixel and memory limits per image.
        limits: the decoder processes (0 decodes everything in the calling thread).
        max_request_pixels: the most pixels all of one request's images may add up to.
        on_restart: called with the reason each time a worker is replaced (a metric).
        work: what a worker does with each image (see DecoderPool).
    """

    def __init__(self, decode_limits: DecodeLimits, limits: WorkerLimits,
                 max_request_pixels: int = 100_000_000, max_waiting_images: int = 4096,
                 on_restart: Callable[[str], None] = lambda reason: None,
                 work: Callable[[bytes, DecodeLimits], np.ndarray | ImageError] = prepare_one):
        self.decode_limits = decode_limits
        self.max_request_pixels = max_request_pixels
        self.max_waiting_images = max_waiting_images
        self.pool = (DecoderPool(decode_limits, limits, on_restart, work)
                     if limits.processes else None)
        # Threads that wait for the workers on behalf of requests (the waiting is all
        # they do): a few per worker, so a request is handed over as soon as one is free.
        self._waiters = ThreadPoolExecutor(max(4, 2 * limits.processes),
                                           thread_name_prefix="decode-wait")
        self._waiting_images = 0

    def start(self) -> None:
        set_pillow_pixel_limit(self.decode_limits.max_pixels)
        if self.pool is None:
            logger.warning("DIGITS_PREPROCESS_WORKERS=0: every image is decoded in the server "
                           "process, without a memory cap or time limit")
        else:
            self.pool.start()

    def close(self) -> None:
        self._waiters.shutdown(wait=True, cancel_futures=True)
        if self.pool is not None:
            self.pool.close()

    def in_batch(self, uploads: list[Upload]) -> list[Upload] | None:
        """The uploads, with their headers, if the request is decoded in its batch; None
        if it must go to the decoder processes first (`prepare_ahead`).

        Asked on the event loop, so it reads a few dozen PNG chunks at most: a request of
        simple PNGs is decoded in its batch, as one stack; anything else is decoded before
        it joins the batch, so that a slow image never holds a model's batch up.
        """
        if self.pool is None:
            return uploads
        if sum(len(upload.data) for upload in uploads) > SIMPLE_REQUEST_BYTES:
            return None
        inspected, pixels = [], 0
        for upload in uploads:
            header = inspect_simple(upload.data, self.decode_limits)
            if header is None:
                return None
            pixels += header.pixels
            if pixels > SIMPLE_REQUEST_PIXELS:
                return None
            inspected.append(Upload(upload.label, upload.data, header))
        return inspected

    def cheap(self, requests: list[list[Upload] | np.ndarray | Partial]) -> bool:
        """Whether preparing this batch costs only a few ms: requests already prepared, and
        a few small plain PNGs of one or two sizes (inspected by `in_batch`) in all."""
        images = pixels = 0
        sizes = set()
        for uploads in requests:
            if isinstance(uploads, np.ndarray | Partial):
                continue
            for upload in uploads:
                header = upload.header
                if header is None or not header.fast_png:
                    return False
                images += 1
                pixels += header.pixels
                sizes.add((header.width, header.height))
        return (images <= CHEAP_BATCH_IMAGES and pixels <= CHEAP_BATCH_PIXELS
                and len(sizes) <= CHEAP_BATCH_SIZES)

    async def prepare_ahead(self, uploads: list[Upload]) -> np.ndarray | Partial:
        """A request's digits, decoded now (in the workers, waited for in a thread)."""
        if self._waiting_images + len(uploads) > self.max_waiting_images:
            raise QueueFull(f"{self._waiting_images} images are waiting for the decoder "
                            f"processes (limit {self.max_waiting_images}); retry shortly.")
        self._waiting_images += len(uploads)
        try:
            outcome = await asyncio.get_running_loop().run_in_executor(
                self._waiters, lambda: self([uploads])[0])
        finally:
            self._waiting_images -= len(uploads)
        if isinstance(outcome, UploadError):
            raise outcome
        return outcome

    def __call__(self, requests: list[list[Upload] | np.ndarray | Partial]
                 ) -> list[np.ndarray | Partial | UploadError]:
        """Each request's digits (uint8 [n, 28, 28], or a Partial when some images could
        not be read) or its error; a request already prepared passes through."""
        answers: list[list] = [[None] * len(uploads) for uploads in requests]
        here: list[tuple[int, int, ImageHeader]] = []
        elsewhere: list[list[_Task]] = []
        for r, uploads in enumerate(requests):
            if not isinstance(uploads, np.ndarray | Partial):
                self._route(r, uploads, answers[r], here, elsewhere)
        if here:
            prepared = prepare_images([requests[r][i].data for r, i, _ in here],
                                      self.decode_limits, [header for _, _, header in here])
            for (r, i, _), result in zip(here, prepared, strict=True):
                answers[r][i] = result
        for tasks in elsewhere:  # one request at a time: each has its own time budget
            for task, results in zip(tasks, self.pool.run(tasks), strict=True):
                for i, result in zip(task.positions, results, strict=True):
                    answers[task.request][i] = result
        return [uploads if isinstance(uploads, np.ndarray | Partial)
                else self._outcome(uploads, mine)
                for uploads, mine in zip(requests, answers, strict=True)]

    def _route(self, r: int, uploads: list[Upload], answers: list, here: list,
               elsewhere: list[list[_Task]]) -> None:
        """Inspect one request's images; queue them here or for the workers. An image that
        fails inspection gets its error and the others go on; a request over its pixel
        budget is failed as a whole (see `_outcome`)."""
        local, pooled, pixels, pixel_counts = [], [], 0, {}
        for i, upload in enumerate(uploads):
            if upload.refused is not None:  # unreadable before decoding (bad base64)
                answers[i] = ImageError(upload.refused)
                continue
            try:
                header = upload.header or inspect(upload.data, self.decode_limits)
            except ImageError as error:
                answers[i] = error
                continue
            pixels += header.pixels
            pixel_counts[i] = header.pixels
            if pixels > self.max_request_pixels:
                answers[:] = [RequestTooLarge(
                    f"{upload.label}: the request's images add up to over "
                    f"{self.max_request_pixels:,} pixels "
                    "(DIGITS_MAX_REQUEST_PIXELS); send fewer or smaller images per request.")
                ] * len(answers)
                return
            if header.simple or self.pool is None:
                local.append((r, i, header))
            else:
                pooled.append(i)
        here.extend(local)
        if not pooled:
            return
        # A request's images are split over the workers, never mixed with another's.
        parts = min(len(pooled), self.pool.limits.processes)
        elsewhere.append([_Task(r, positions, [uploads[i].data for i in positions],
                                sum(pixel_counts[i] for i in positions))
                          for positions in (chunk.tolist() for chunk in
                                            np.array_split(np.array(pooled), parts))])

    @staticmethod
    def _outcome(uploads: list[Upload], answers: list) -> np.ndarray | Partial | UploadError:
        """The request's digits; with some images unreadable, a Partial (each of those gets
        its own error entry in the answer); with none readable, or a request-wide limit
        broken, the request's error."""
        errors = {}
        for i, (upload, answer) in enumerate(zip(uploads, answers, strict=True)):
            if isinstance(answer, RequestWide):
                return UploadError(answer.status_code, str(answer))
            if isinstance(answer, ImageError):
                log_rejection(answer, upload.data)
                errors[i] = as_upload_error(upload, answer)
        if not errors:
            return np.stack(answers)
        if len(errors) == len(uploads):
            first = next(iter(errors.values()))
            if len(uploads) == 1:
                return first
            return UploadError(first.status_code,
                               f"None of the {len(uploads)} images could be read; the first: "
                               f"{first.detail}")
        return Partial(np.stack([a for a in answers if not isinstance(a, ImageError)]), errors)


def as_upload_error(upload: Upload, error: ImageError) -> UploadError:
    return UploadError(error.status_code, f"{upload.label}: {error}")
