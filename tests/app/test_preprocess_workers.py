"""Preprocessing in worker processes: results per request, errors named, crashes survived."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from app.preprocess_workers import PreprocessWorkers
from app.uploads import Upload, UploadError
from tests.images import draw_one, encode

GOOD = encode(draw_one())
BIG = 40  # images in a "big" batch; in these tests every batch goes to the workers


@pytest.fixture(scope="module")
def workers():
    workers = PreprocessWorkers(processes=2, max_pixels=4_000_000, min_pool_bytes=0)
    workers.start()
    yield workers
    workers.close()


def uploads(count: int, bad_at: int | None = None) -> list[Upload]:
    return [Upload(f"file #{i + 1}", b"broken" if i == bad_at else GOOD) for i in range(count)]


def test_a_big_batch_is_prepared_by_the_workers_in_request_order(workers):
    requests = [uploads(BIG), uploads(3, bad_at=1), uploads(5)]
    good, bad, other = workers(requests)
    assert good.shape == (BIG, 28, 28) and good.dtype == np.uint8
    assert other.shape == (5, 28, 28)
    assert (good == good[0]).all() and (other[0] == good[0]).all()
    assert isinstance(bad, UploadError) and bad.status_code == 400
    assert bad.detail.startswith("file #2:")


def test_the_workers_give_the_digits_the_server_process_gives(workers):
    in_process = PreprocessWorkers(processes=0, max_pixels=4_000_000)
    (here,) = in_process([uploads(1)])
    (there,) = workers([uploads(BIG)])
    assert (here[0] == there).all()


def test_only_batches_of_many_bytes_go_to_the_workers():
    workers = PreprocessWorkers(processes=1, max_pixels=4_000_000, min_pool_bytes=len(GOOD) * 3)
    workers.start()
    try:
        sent = []
        original_submit = workers._pool.submit
        workers._pool.submit = lambda *args: sent.append(len(args[1])) or original_submit(*args)
        workers([uploads(2)])
        workers([uploads(2), uploads(1)])
        assert sent == [3]
    finally:
        workers.close()


def test_a_dead_worker_is_replaced_and_the_batch_still_answered(workers):
    for process in list(workers._pool._processes.values()):
        os.kill(process.pid, signal.SIGKILL)
    (answer,) = workers([uploads(BIG)])
    assert answer.shape == (BIG, 28, 28)
    (again,) = workers([uploads(BIG)])  # the new pool works too
    assert (again == answer).all()


def test_workers_stay_light(workers):
    # A worker that imported TensorFlow would cost about 600 MB instead of about 35 MB.
    check = "'tensorflow' in __import__('sys').modules"
    assert workers._pool.submit(eval, check).result() is False
