"""The batcher on its own, with a stand-in model function (no TensorFlow)."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from app.batching import Batcher, QueueFull


class RecordingModel:
    """Doubles its input; remembers each call's batch size; can be slowed or broken."""

    def __init__(self, delay_s: float = 0.0, fail_on: float | None = None):
        self.calls: list[int] = []
        self.entered = threading.Event()  # a model call has begun
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.release = threading.Event()
        self.release.set()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.entered.set()
        self.release.wait(5)
        self.calls.append(len(batch))
        time.sleep(self.delay_s)
        if self.fail_on is not None and (batch == self.fail_on).any():
            raise ValueError("poisoned input")
        return batch * 2


def run(coroutine):
    return asyncio.run(coroutine)


async def started(model, **options) -> Batcher:
    defaults = {"max_batch_size": 8, "timeout_s": 0.0, "max_queue_images": 64}
    batcher = Batcher(model, **{**defaults, **options})
    batcher.start()
    return batcher


async def until(condition, timeout_s: float = 10.0) -> None:
    """Wait for a condition, not for a guessed time: these tests must hold on a busy machine."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.001)


def images(value: float, count: int = 1) -> np.ndarray:
    return np.full((count, 2), value, dtype=np.float32)


def test_each_request_gets_its_own_results_in_order():
    async def scenario():
        model = RecordingModel()
        batcher = await started(model)
        results = await asyncio.gather(*(batcher.submit(images(i, count=1 + i % 3))
                                          for i in range(10)))
        await batcher.stop()
        return results

    for i, result in enumerate(run(scenario())):
        assert result.outputs.shape == (1 + i % 3, 2)
        assert (result.outputs == 2 * i).all() and (result.inputs == i).all()


def test_concurrent_requests_share_model_calls():
    async def scenario():
        model = RecordingModel()
        model.release.clear()  # hold the model so that requests pile up
        batcher = await started(model)
        first = asyncio.ensure_future(batcher.submit(images(0)))
        await until(model.entered.is_set)  # the first call holds the model
        rest = [asyncio.ensure_future(batcher.submit(images(i))) for i in range(1, 6)]
        await until(lambda: len(batcher._jobs) == 5)
        model.release.set()
        await asyncio.gather(first, *rest)
        await batcher.stop()
        return model.calls

    assert run(scenario()) == [1, 5]


def test_batches_never_exceed_the_maximum_but_big_requests_are_split():
    async def scenario():
        model = RecordingModel()
        model.release.clear()
        batcher = await started(model, max_batch_size=4)
        jobs = [asyncio.ensure_future(batcher.submit(images(i, count=3))) for i in range(3)]
        big = asyncio.ensure_future(batcher.submit(images(9, count=10)))
        await until(model.entered.is_set)
        model.release.set()
        results = await asyncio.gather(*jobs, big)
        await batcher.stop()
        return model.calls, results

    calls, results = run(scenario())
    assert max(calls) <= 4 and sum(calls) == 19
    assert results[-1].outputs.shape == (10, 2) and (results[-1].outputs == 18).all()


def test_queue_delay_waits_for_more_images():
    async def scenario(timeout_s):
        model = RecordingModel()
        # A batch of two is "enough", so the wait ends when the second comes, however late.
        batcher = await started(model, timeout_s=timeout_s, max_batch_size=2)
        started_at = time.perf_counter()
        first = asyncio.ensure_future(batcher.submit(images(1)))
        await asyncio.sleep(0.02)
        second = asyncio.ensure_future(batcher.submit(images(2)))
        await asyncio.gather(first, second)
        elapsed = time.perf_counter() - started_at
        await batcher.stop()
        return model.calls, elapsed

    calls, _ = run(scenario(timeout_s=10.0))
    assert calls == [2]  # the first request waited for the second
    calls, _ = run(scenario(timeout_s=0.0))
    assert calls == [1, 1]  # no delay: each ran as soon as the model was free


def test_queue_delay_is_bounded():
    async def scenario():
        batcher = await started(RecordingModel(), timeout_s=0.05)
        started_at = time.perf_counter()
        await batcher.submit(images(1))
        elapsed = time.perf_counter() - started_at
        await batcher.stop()
        return elapsed

    assert 0.04 <= run(scenario()) < 1.0


def test_a_lone_client_does_not_wait_once_it_was_seen_alone():
    async def scenario():
        batcher = await started(RecordingModel(), timeout_s=1.0)
        await batcher.submit(images(1))  # nothing seen yet: this one waits the full delay
        started_at = time.perf_counter()
        for _ in range(3):
            await batcher.submit(images(1))
        elapsed = time.perf_counter() - started_at
        await batcher.stop()
        return elapsed

    assert run(scenario()) < 0.5  # three requests, none of them held for the 1 s delay


def test_under_steady_load_a_batch_waits_for_the_clients_just_answered():
    async def scenario():
        model = RecordingModel()
        batcher = await started(model, timeout_s=1.0)
        await asyncio.gather(*(batcher.submit(images(i)) for i in range(3)))  # a load of 3
        started_at = time.perf_counter()

        async def late(value):
            await asyncio.sleep(0.03)
            return await batcher.submit(images(value))

        await asyncio.gather(batcher.submit(images(7)), late(8), late(9))
        elapsed = time.perf_counter() - started_at
        await batcher.stop()
        return model.calls, elapsed

    calls, elapsed = run(scenario())
    assert calls[-1] == 3  # the early request waited for the two late ones...
    assert elapsed < 0.5   # ...but only until they came, not for the whole delay


def test_a_failing_request_fails_alone():
    async def scenario():
        model = RecordingModel(fail_on=-1)
        model.release.clear()
        batcher = await started(model)
        jobs = [asyncio.ensure_future(batcher.submit(images(v))) for v in (1, -1, 3)]
        await until(model.entered.is_set)
        model.release.set()
        results = await asyncio.gather(*jobs, return_exceptions=True)
        await batcher.stop()
        return results

    good, bad, other = run(scenario())
    assert (good.outputs == 2).all() and (other.outputs == 6).all()
    assert isinstance(bad, ValueError)


def test_a_request_that_cannot_be_prepared_fails_alone():
    def prepare(payloads):
        return [ValueError("cannot decode") if p == "broken" else images(float(p))
                for p in payloads]

    async def scenario():
        model = RecordingModel()
        model.release.clear()
        batcher = await started(model, prepare=prepare)
        jobs = [asyncio.ensure_future(batcher.submit(p, size=1)) for p in ("1", "broken", "3")]
        await until(model.entered.is_set)
        model.release.set()
        results = await asyncio.gather(*jobs, return_exceptions=True)
        await batcher.stop()
        return model.calls, results

    calls, (good, bad, other) = run(scenario())
    assert (good.outputs == 2).all() and (other.outputs == 6).all()
    assert isinstance(bad, ValueError) and calls == [2]  # one model call for the two good ones


@pytest.mark.parametrize("cheap", [True, False])
def test_a_cheap_batch_is_prepared_on_the_event_loop_and_fails_alone(cheap):
    prepared_on = []

    def prepare(payloads):
        prepared_on.append(threading.current_thread())
        if "broken" in payloads:  # fails the whole call: the batcher must find whose fault
            raise ValueError("cannot decode")
        return [images(float(p)) for p in payloads]

    async def scenario():
        model = RecordingModel()
        model.release.clear()
        batcher = await started(model, prepare=prepare, cheap=lambda payloads: cheap)
        first = asyncio.ensure_future(batcher.submit("1", size=1))
        await until(model.entered.is_set)  # the next two queue up behind it, as one batch
        rest = [asyncio.ensure_future(batcher.submit(p, size=1)) for p in ("broken", "3")]
        await until(lambda: len(batcher._jobs) == 2)
        model.release.set()
        results = await asyncio.gather(first, *rest, return_exceptions=True)
        await batcher.stop()
        return model.calls, results

    calls, (one, bad, three) = run(scenario())
    assert (one.outputs == 2).all() and (three.outputs == 6).all()
    assert isinstance(bad, ValueError) and calls == [1, 1]
    loop_thread = threading.main_thread()  # asyncio.run runs the loop here
    assert all((thread is loop_thread) == cheap for thread in prepared_on)


def test_a_full_queue_sheds_load():
    async def scenario():
        model = RecordingModel()
        model.release.clear()
        batcher = await started(model, max_queue_images=4)
        running = asyncio.ensure_future(batcher.submit(images(0)))  # taken by the worker
        await until(model.entered.is_set)
        queued = [asyncio.ensure_future(batcher.submit(images(i, count=2))) for i in (1, 2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull) as refused:
            await batcher.submit(images(3))
        model.release.set()
        await asyncio.gather(running, *queued)
        await batcher.stop()
        return refused.value

    error = run(scenario())
    assert error.retry_after_s >= 1 and "limit 4" in str(error)


def test_cancelled_requests_are_skipped():
    async def scenario():
        model = RecordingModel()
        model.release.clear()
        batcher = await started(model)
        first = asyncio.ensure_future(batcher.submit(images(0)))
        await until(model.entered.is_set)
        gone = asyncio.ensure_future(batcher.submit(images(1, count=3)))
        kept = asyncio.ensure_future(batcher.submit(images(2)))
        await asyncio.sleep(0)
        gone.cancel()
        model.release.set()
        await asyncio.gather(first, kept)
        await batcher.stop()
        return model.calls

    assert run(scenario()) == [1, 1]
