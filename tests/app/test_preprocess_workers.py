"""Preprocessing in worker processes: results per request, failures kept to their own
request, and workers replaced whenever they die, at whatever point that happens."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import numpy as np
import pytest

from app.batching import Partial, QueueFull
from app.decoding import DecodeLimits
from app.preprocess_workers import (
    CHEAP_BATCH_IMAGES,
    CHEAP_BATCH_PIXELS,
    CHEAP_BATCH_SIZES,
    PreprocessWorkers,
    WorkerLimits,
)
from app.preprocessing import prepare_one
from app.uploads import Upload, UploadError
from tests.images import draw_one, encode

PNG = encode(draw_one())                     # simple: decoded in the calling thread
JPEG = encode(draw_one().convert("RGB"), "JPEG")  # decoded by the workers
# Valid JPEGs (a trailer after the end marker is ignored by decoders) that tell the
# scripted worker below to crash or hang on them.
CRASH = JPEG + b"CRASH"
HANG = JPEG + b"HANG"
LIMITS = DecodeLimits(max_pixels=4_000_000)


SLOW = JPEG + b"SLOW"


def scripted_work(data: bytes, limits: DecodeLimits):
    """The real work, except on the marked images: a decoder that segfaults, hangs without
    using the CPU, or uses 0.4 s of it."""
    if data.endswith(b"CRASH"):
        os.kill(os.getpid(), signal.SIGKILL)
    if data.endswith(b"HANG"):
        time.sleep(60)
    if data.endswith(b"SLOW"):
        spin_until = time.process_time() + 0.4  # 0.4 s of CPU
        while time.process_time() < spin_until:
            pass
    return prepare_one(data, limits)


class Restarts(list):
    def __call__(self, reason: str) -> None:
        self.append(reason)


@pytest.fixture
def workers():
    restarts = Restarts()
    workers = PreprocessWorkers(LIMITS, WorkerLimits(processes=2, timeout_s=2.0),
                                on_restart=restarts, work=scripted_work)
    workers.start()
    workers.restarts = restarts
    yield workers
    workers.close()


def uploads(data: bytes, count: int = 1, first: int = 1) -> list[Upload]:
    return [Upload(f"file #{i}", data) for i in range(first, first + count)]


def assert_digits(answer, count: int) -> None:
    assert isinstance(answer, np.ndarray), answer
    assert answer.shape == (count, 28, 28) and answer.dtype == np.uint8


def kill_idle_workers(workers: PreprocessWorkers) -> None:
    """SIGKILL every worker, and wait until each is really gone."""
    processes = list(workers.pool._workers)
    for worker in processes:
        os.kill(worker.process.pid, signal.SIGKILL)
    for worker in processes:
        worker.process.join(timeout=10)
        assert not worker.process.is_alive()


# --- what goes where ----------------------------------------------------------------------

def test_requests_are_answered_in_order_with_their_own_errors(workers):
    good, bad, other, junk = workers([
        uploads(JPEG, 5), uploads(JPEG, 2) + uploads(b"broken", first=3), uploads(PNG, 3),
        uploads(b"\x89PNG\r\n\x1a\n")])
    assert_digits(good, 5)
    assert_digits(other, 3)
    # One unreadable image among readable ones costs only itself: the others are answered.
    assert isinstance(bad, Partial)
    assert_digits(bad.inputs, 2)
    assert list(bad.errors) == [2] and bad.errors[2].status_code == 415
    assert bad.errors[2].detail.startswith("file #3:")
    # A request of one unreadable image fails with that image's status.
    assert isinstance(junk, UploadError) and junk.status_code == 400


def test_an_image_refused_before_decoding_gets_its_own_error_entry(workers):
    refused = Upload("images[1]", b"", refused="not valid base64: bad padding.")
    (answer,) = workers([uploads(JPEG) + [refused] + uploads(PNG, first=3)])
    assert isinstance(answer, Partial)
    assert_digits(answer.inputs, 2)
    assert answer.errors[1].status_code == 400
    assert answer.errors[1].detail == "images[1]: not valid base64: bad padding."


def test_a_request_with_no_readable_image_fails_with_the_first_ones_status(workers):
    (answer,) = workers([uploads(b"broken", 2) + uploads(b"\x89PNG\r\n\x1a\n", first=3)])
    assert isinstance(answer, UploadError) and answer.status_code == 415
    assert "None of the 3 images" in answer.detail and "file #1" in answer.detail


def test_the_workers_give_the_digits_the_server_process_gives(workers):
    in_process = PreprocessWorkers(LIMITS, WorkerLimits(processes=0))
    (here,) = in_process([uploads(JPEG)])
    (there,) = workers([uploads(JPEG, 3)])
    assert (there == here[0]).all()


def test_only_a_few_small_plain_pngs_are_cheap_enough_for_the_event_loop(workers):
    digit = encode(draw_one(size=(28, 28), box=(12, 4, 15, 23)))
    small = workers.in_batch(uploads(digit, 3))
    assert small is not None and workers.cheap([small, np.zeros((2, 28, 28), np.uint8)])
    assert not workers.cheap([uploads(digit)])  # not inspected by in_batch
    assert workers.in_batch(uploads(JPEG)) is None  # decoded ahead, by the workers
    many = workers.in_batch(uploads(digit, CHEAP_BATCH_IMAGES + 1))
    assert many is not None and not workers.cheap([many])
    # A blank canvas compresses to a few hundred bytes however large it is: its pixels count.
    canvas = workers.in_batch(uploads(encode(draw_one(size=(300, 300)))))
    assert canvas is not None and canvas[0].header.pixels > CHEAP_BATCH_PIXELS
    assert not workers.cheap([canvas])
    # Each size is a stack of its own, with a cost of its own: only a few sizes are cheap.
    sizes = [encode(draw_one(size=(28, 20 + k), box=(2, 2, 10, 10)))
             for k in range(CHEAP_BATCH_SIZES + 1)]
    assert not workers.cheap([workers.in_batch([Upload(f"#{k}", data)
                                                for k, data in enumerate(sizes)])])
    # Only PNGs OpenCV decodes plainly: a transparent one goes through Pillow.
    transparent = workers.in_batch(uploads(encode(draw_one(size=(28, 28), mode="LA"))))
    assert transparent is not None and not workers.cheap([transparent])
    # Without decoder processes nothing is inspected ahead, so nothing is cheap.
    [alone] = PreprocessWorkers(LIMITS, WorkerLimits(processes=0)).in_batch(uploads(PNG))
    assert alone.header is None


def test_a_request_of_many_pixels_in_few_bytes_is_decoded_ahead(workers):
    # A blank megapixel canvas is a few KB: in the batch, a hundred of them held every
    # request for the model up for most of a second.
    canvas = encode(draw_one(size=(1024, 1024)))
    assert len(canvas) < 20_000
    assert workers.in_batch(uploads(canvas)) is not None  # one is cheap enough
    assert workers.in_batch(uploads(canvas, 2)) is None  # two go to the decoder processes


def test_only_non_simple_images_reach_the_workers(workers, monkeypatch):
    sent = []
    original = workers.pool.run
    monkeypatch.setattr(workers.pool, "run", lambda tasks: sent.extend(tasks) or original(tasks))
    (mixed,) = workers([uploads(PNG, 2) + uploads(JPEG, first=3) + uploads(PNG, first=4)])
    assert_digits(mixed, 4)
    assert [task.positions for task in sent] == [[2]]


def test_a_request_over_the_pixel_budget_is_413_before_decoding():
    workers = PreprocessWorkers(LIMITS, WorkerLimits(processes=0), max_request_pixels=100_000)
    (answer,) = workers([uploads(PNG, 2)])  # 2 x 60,000 pixels
    assert isinstance(answer, UploadError) and answer.status_code == 413
    assert "file #2" in answer.detail and "DIGITS_MAX_REQUEST_PIXELS" in answer.detail


# --- a worker dies, at every point --------------------------------------------------------

def test_workers_killed_while_idle_are_replaced_before_the_next_batch(workers):
    kill_idle_workers(workers)
    (answer,) = workers([uploads(JPEG, 4)])
    assert_digits(answer, 4)
    assert workers.restarts == ["crashed", "crashed"]


def test_a_worker_killed_after_its_task_was_sent_but_not_taken_is_retried(workers,
                                                                          monkeypatch):
    # Stopped workers can't take a task; killing each right after the send is a death
    # "between submit and result" that the image had no part in.
    for worker in workers.pool._workers:
        os.kill(worker.process.pid, signal.SIGSTOP)
    original_send = type(next(iter(workers.pool._workers))).send
    killed = []

    def send_then_kill(worker, blobs):
        sent = original_send(worker, blobs)
        if worker.process.pid not in killed and len(killed) < 2:
            killed.append(worker.process.pid)
            os.kill(worker.process.pid, signal.SIGKILL)
        return sent

    monkeypatch.setattr(type(next(iter(workers.pool._workers))), "send", send_then_kill)
    (answer,) = workers([uploads(JPEG, 2)])
    assert_digits(answer, 2)
    assert len(killed) == 2 and workers.restarts == ["crashed", "crashed"]


def test_a_crash_on_an_image_fails_its_request_alone(workers, caplog):
    first, crashed, last = workers([uploads(JPEG, 3), uploads(JPEG) + uploads(CRASH, first=2),
                                    uploads(JPEG, 2)])
    assert_digits(first, 3)
    assert_digits(last, 2)
    # Its neighbour in the same request is still answered; the crash is its own entry.
    assert isinstance(crashed, Partial)
    assert_digits(crashed.inputs, 1)
    [(position, error)] = crashed.errors.items()
    assert position == 1 and error.status_code == 400
    assert error.detail.startswith("file #2:") and "crashed" in error.detail
    assert workers.restarts == ["crashed"]
    [logged] = [r for r in caplog.records if r.name == "digits.preprocess"]
    assert "image #2" in logged.getMessage() and "sha256" in logged.getMessage()


def test_the_images_behind_a_crash_are_decoded_on_a_fresh_worker():
    restarts = Restarts()
    workers = PreprocessWorkers(LIMITS, WorkerLimits(processes=1, timeout_s=2.0),
                                on_restart=restarts, work=scripted_work)
    workers.start()
    try:
        (answer,) = workers([uploads(CRASH) + uploads(JPEG, 9, first=2)])
        assert isinstance(answer, Partial) and list(answer.errors) == [0]
        assert_digits(answer.inputs, 9)
        assert restarts == ["crashed"]
    finally:
        workers.close()


def test_a_second_crash_in_the_same_images_leaves_the_rest_undecoded_with_a_retry_status():
    restarts = Restarts()
    workers = PreprocessWorkers(LIMITS, WorkerLimits(processes=1, timeout_s=2.0),
                                on_restart=restarts, work=scripted_work)
    workers.start()
    try:
        (answer,) = workers([uploads(JPEG) + uploads(CRASH, 3, first=2) + uploads(JPEG, first=5)])
        assert isinstance(answer, Partial)
        assert_digits(answer.inputs, 1)
        assert [e.status_code for e in answer.errors.values()] == [400, 400, 503, 503]
        assert "send this one again on its own" in answer.errors[3].detail
        assert restarts == ["crashed", "crashed"]  # two decoders at most, whatever it sends
    finally:
        workers.close()


def test_an_image_that_overruns_its_time_is_413_and_its_worker_replaced():
    # A hang uses no CPU: it is stopped by the wall-clock backstop, 10 x 0.2 s.
    restarts = Restarts()
    workers = PreprocessWorkers(LIMITS, WorkerLimits(processes=2, timeout_s=0.2),
                                on_restart=restarts, work=scripted_work)
    workers.start()
    try:
        started = time.monotonic()
        hung, fine = workers([uploads(HANG), uploads(JPEG, 2)])
        assert time.monotonic() - started < 5
        assert isinstance(hung, UploadError) and hung.status_code == 413
        assert "took over 0.2 s" in hung.detail
        assert_digits(fine, 2)
        assert restarts == ["timeout"]
        (again,) = workers([uploads(JPEG, 2)])
        assert_digits(again, 2)
    finally:
        workers.close()


def test_deaths_at_every_point_across_consecutive_batches(workers):
    # Crash during a batch, kill the replacements while idle, crash again during the next
    # batch: every good request is answered every time, from the first batch to the last.
    for _ in range(3):
        crashed, good = workers([uploads(CRASH), uploads(JPEG, 3)])
        assert isinstance(crashed, UploadError) and crashed.status_code == 400
        assert_digits(good, 3)
        kill_idle_workers(workers)
        (after,) = workers([uploads(JPEG, 4)])
        assert_digits(after, 4)
    assert workers.restarts.count("crashed") == 3 + 3 * 2
    assert len(workers.pool._workers) == 2


def test_concurrent_batches_share_the_workers_through_crashes(workers):
    # Each model has its own batch thread; all of them use the one pool. On a loaded
    # machine a request may find both workers busy restarting for 2 s: a 503 (shedding),
    # for the crashing request or its good neighbour, never a crash of the good one.
    failures, crashes, answered = [], [], []

    def batches(marked: bytes) -> None:
        for _ in range(5):
            bad, good = workers([uploads(marked), uploads(JPEG, 2)])
            shed = isinstance(good, UploadError) and good.status_code == 503
            if not (isinstance(bad, UploadError) and bad.status_code in (400, 503)
                    and (isinstance(good, np.ndarray) or shed)):
                failures.append((bad, good))
            crashes.append(bad.status_code == 400)
            answered.append(isinstance(good, np.ndarray))

    threads = [threading.Thread(target=batches, args=(CRASH,)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not failures
    assert len(crashes) == 15 and sum(crashes) >= 10 and sum(answered) >= 10
    assert workers.restarts.count("crashed") == sum(crashes)
    assert len(workers.pool._workers) == 2


def test_workers_stay_light(workers):
    # A worker that imported TensorFlow would cost about 600 MB instead of about 40 MB.
    for pid in workers.pool.pids:
        modules = open(f"/proc/{pid}/maps").read()
        assert "tensorflow" not in modules


def test_a_request_has_a_time_budget_for_all_its_images():
    # Each image is within its own 1 s, but 6 x 0.4 s of CPU is over the request's 1 s.
    # (The limits are CPU time: on a busy machine this takes longer in wall time.)
    restarts = Restarts()
    workers = PreprocessWorkers(LIMITS, WorkerLimits(processes=2, timeout_s=1.0,
                                                     request_timeout_s=1.0),
                                on_restart=restarts, work=scripted_work)
    workers.start()
    try:
        slow, fine = workers([uploads(SLOW, 6), uploads(JPEG)])
        assert restarts == ["timeout", "timeout"]  # both of its workers were stopped
        assert isinstance(slow, UploadError) and slow.status_code == 413
        assert "request's images took over 1 s of CPU" in slow.detail
        assert_digits(fine, 1)
    finally:
        workers.close()


def test_a_request_that_finds_every_worker_busy_is_503():
    workers = PreprocessWorkers(LIMITS, WorkerLimits(processes=1, timeout_s=0.3,
                                                     queue_timeout_s=0.3), work=scripted_work)
    workers.start()
    try:
        hanging = threading.Thread(target=workers, args=([uploads(HANG)],))
        hanging.start()
        deadline = time.monotonic() + 10
        while not workers.pool._idle.empty():  # until the hang holds the worker (for 3 s)
            assert time.monotonic() < deadline
            time.sleep(0.005)
        (busy,) = workers([uploads(JPEG)])
        assert isinstance(busy, UploadError) and busy.status_code == 503
        # A busy pool is the whole request's 503 (retry it), even if some images were
        # decoded in the server process meanwhile.
        (mixed,) = workers([uploads(PNG) + uploads(JPEG, first=2)])
        assert isinstance(mixed, UploadError) and mixed.status_code == 503
        hanging.join(timeout=30)
    finally:
        workers.close()


def test_only_requests_of_simple_pngs_are_decoded_in_their_batch(workers):
    import zlib

    from tests.app.test_decoding import chunk

    text = chunk(b"zTXt", b"k\0\0" + zlib.compress(b"x"))
    inspected = workers.in_batch(uploads(PNG, 3))
    assert [upload.header.simple for upload in inspected] == [True] * 3
    assert workers.in_batch(uploads(PNG) + uploads(JPEG, first=2)) is None
    assert workers.in_batch(uploads(PNG[:33] + text + PNG[33:])) is None
    assert workers.in_batch(uploads(PNG, 700)) is None  # over 256 KB: inspected in a thread
    assert workers.in_batch(uploads(PNG[:60])) is None  # refused there, with its reason
    in_process = PreprocessWorkers(LIMITS, WorkerLimits(processes=0))
    assert in_process.in_batch(uploads(JPEG)) is not None


def test_a_request_prepared_ahead_passes_through_its_batch(workers):
    digits = asyncio.run(workers.prepare_ahead(uploads(JPEG, 2)))
    assert_digits(digits, 2)
    passed, decoded = workers([digits, uploads(PNG)])
    assert passed is digits
    assert_digits(decoded, 1)


def test_prepare_ahead_refuses_more_waiting_images_than_allowed():
    workers = PreprocessWorkers(LIMITS, WorkerLimits(processes=1), max_waiting_images=2)
    workers.start()
    try:
        with pytest.raises(QueueFull):
            asyncio.run(workers.prepare_ahead(uploads(JPEG, 3)))
        with pytest.raises(UploadError) as refused:
            asyncio.run(workers.prepare_ahead(uploads(b"junk")))
        assert refused.value.status_code == 415
    finally:
        workers.close()
