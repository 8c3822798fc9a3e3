"""The compiled normalisation (app.kernels) against numpy's (app.preprocessing), bit for bit.

The server processes prepare digits with the compiled loops and the decoder processes with
numpy, so a digit must not depend on which did: every generated image, alone and stacked
with others of its size, gives the same digits and the same refusals both ways.
`python -m bench.preprocess --digests` checks the same on the benchmark sets.
"""

from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from app import kernels
from app import preprocessing as pp
from tests.images import draw_one, encode, seven


@pytest.fixture(scope="module", autouse=True)
def compiled():
    kernels.warm_up()


def seven_png() -> bytes:
    return encode(Image.fromarray(seven()))


def with_numpy(grays: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    saved, pp._kernels = pp._kernels, None
    try:
        return pp.normalize(grays)
    finally:
        pp._kernels = saved


def assert_same(grays: np.ndarray) -> None:
    """The digits, and each step's own output on the way (more sensitive than the
    digits, which round most small differences away)."""
    expected_digits, expected_found = with_numpy(grays)
    digits, found = kernels.normalize(grays)
    np.testing.assert_array_equal(found, expected_found)
    np.testing.assert_array_equal(digits, expected_digits)
    assert digits.dtype == np.uint8

    expected_ink, _ = pp.to_light_on_dark(grays)
    ink, _ = kernels.light_on_dark(grays, pp.frame_depth(grays.shape), pp.NOISE_SCALE,
                                   pp.LOW_QUANTILE, pp.HIGH_QUANTILE, pp.MIN_CONTRAST)
    np.testing.assert_array_equal(ink, expected_ink)
    if not found.any():
        return
    ink = ink[found]
    boxes, sizes = kernels.boxes_and_sizes(ink, pp.WORKING_BOX, pp.STROKE_LEVEL, pp.CROP_TRIM)
    np.testing.assert_array_equal(boxes, pp.find_digit_boxes(ink))
    np.testing.assert_array_equal(sizes, pp.fitted_sizes(boxes, pp.WORKING_BOX)[2])
    working, _ = kernels.fit_in_box(ink, pp.WORKING_BOX)
    np.testing.assert_array_equal(working, pp.fit_in_box(ink, boxes, pp.WORKING_BOX)[0])
    _, distances = pp.stroke_distances(working)
    np.testing.assert_array_equal(
        kernels.ridge_widths(distances, pp.DISTANCE_STEPS, pp.MNIST_STROKE),
        pp.stroke_widths(working))


@st.composite
def images(draw, height: int, width: int) -> np.ndarray:
    """One uint8 image of the kinds people send: strokes of any width and level on any
    paper (light on dark or dark on light, some noise), blobs that fill the frame,
    two-level scans, blank pages and pure noise."""
    kind = draw(st.sampled_from(["strokes", "filled", "blank", "noise", "levels"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    paper, ink = draw(st.integers(0, 255)), draw(st.integers(0, 255))
    image = np.full((height, width), paper, np.uint8)
    if kind == "noise":
        return rng.integers(0, 256, (height, width), dtype=np.uint8)
    if kind == "levels":  # a few flat levels in blocks: ties and exact middles are common
        levels = rng.choice(draw(st.lists(st.integers(0, 255), min_size=2, max_size=4)),
                            ((height + 3) // 4, (width + 3) // 4))
        return np.kron(levels, np.ones((4, 4)))[:height, :width].astype(np.uint8)
    if kind == "blank":
        return image
    if kind == "filled":  # a heavy digit cropped tight: ink over much of the image
        cv2.ellipse(image, (width // 2, height // 2), (max(1, width // 2), max(1, height // 2)),
                    0, 0, 360, ink, -1)
        cv2.ellipse(image, (width // 2, height // 2), (max(1, width // 5), max(1, height // 5)),
                    0, 0, 360, paper, -1)
    else:
        pen = draw(st.integers(1, max(1, min(height, width) // 4)))
        for _ in range(draw(st.integers(1, 4))):
            points = rng.integers(0, [width, height], (2, 2))
            cv2.line(image, tuple(map(int, points[0])), tuple(map(int, points[1])), ink, pen)
    if draw(st.booleans()):  # sensor noise
        image = np.clip(image + rng.normal(0, draw(st.floats(0, 20)), image.shape), 0, 255)
    if draw(st.booleans()):  # a two-level scan
        image = np.where(image > (int(paper) + int(ink)) / 2, 255, 0)
    return image.astype(np.uint8)


@st.composite
def stacks(draw) -> np.ndarray:
    height = draw(st.integers(1, 72))
    width = draw(st.integers(1, 72))
    count = draw(st.integers(1, 5))
    return np.stack([draw(images(height, width)) for _ in range(count)])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(grays=stacks())
def test_compiled_and_numpy_normalisation_agree(grays):
    assert_same(grays)
    for gray in grays:
        assert_same(gray[np.newaxis])


@pytest.mark.parametrize("shape", [(1, 0, 5), (2, 5, 0), (1, 1, 1), (3, 2, 9)])
def test_they_agree_on_images_of_no_or_few_pixels(shape):
    assert_same(np.full(shape, 77, np.uint8))
    assert_same(np.arange(np.prod(shape), dtype=np.uint8).reshape(shape))


def test_they_agree_on_a_drawn_digit_and_a_photo_sized_page():
    digit = np.asarray(draw_one(), dtype=np.uint8)
    assert_same(digit[np.newaxis])
    assert_same(np.asarray(draw_one(size=(1200, 1100)), dtype=np.uint8)[np.newaxis])


def test_a_full_store_of_resampling_weights_starts_afresh(monkeypatch):
    """The weights of every digit size a thread met are kept up to a bound; past it the
    store is emptied and refilled (or, for a stack needing more than it holds, bypassed),
    and the digits stay the same."""
    monkeypatch.setattr(kernels, "_weights", _SmallStore())
    rng = np.random.default_rng(7)
    clears = 0
    for size in (20, 31, 45, 58, 64, 20, 70):
        grays = np.zeros((3, size, size), np.uint8)
        for i, pen in enumerate((1, 3, 6)):
            cv2.line(grays[i], (int(rng.integers(size)), 0), (int(rng.integers(size)), size - 1),
                     255, pen)
        used = kernels._weights.used
        assert_same(grays)
        clears += kernels._weights.used < used
        assert kernels._weights.used <= _SmallStore.CAPACITY
    assert clears > 0


class _SmallStore(kernels._Weights):
    CAPACITY = 3000


def test_a_digit_without_strokes_is_resampled_as_numpy_does():
    """No pixel at stroke level: the box starts past the image's edge. Never found as a
    digit, but the loops must not write outside their arrays (the tests check bounds)."""
    ink = np.zeros((2, 30, 30), np.float32)
    ink[1, 0, :] = 40.0  # faint, below STROKE_LEVEL
    expected, expected_sizes = pp.fit_in_box(ink, pp.find_digit_boxes(ink), pp.WORKING_BOX)
    fitted, sizes = kernels.fit_in_box(ink, pp.WORKING_BOX)
    np.testing.assert_array_equal(sizes, expected_sizes)
    np.testing.assert_array_equal(fitted, expected)


def test_a_service_whose_compiled_loops_cannot_load_normalises_with_numpy(settings, monkeypatch):
    """A damaged numba cache or a full disk makes loading the loops fail: the service starts
    anyway, with numpy, and says why."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    def damaged():
        raise EOFError("Ran out of input")  # what a truncated cache index raises

    monkeypatch.setattr(kernels, "warm_up", damaged)
    logged = []
    monkeypatch.setattr(pp.logger, "exception", lambda message, *args: logged.append(message))
    try:
        with TestClient(create_app(settings)) as client:
            assert pp._kernels is None
            response = client.post("/predict",
                                   files={"file": ("seven.png", seven_png(), "image/png")})
            assert response.status_code == 200, response.text
        assert any("normalising with numpy" in message for message in logged)
    finally:
        monkeypatch.undo()
        pp.use_compiled_kernels()


def test_threads_normalising_at_once_get_the_same_digits():
    """Each model's batch thread and the event loop may normalise at the same time."""
    rng = np.random.default_rng(3)
    grays = np.zeros((8, 40, 40), np.uint8)
    for gray in grays:
        cv2.circle(gray, tuple(map(int, rng.integers(10, 30, 2))), int(rng.integers(4, 12)),
                   255, int(rng.integers(1, 5)))
    expected, _ = with_numpy(grays)
    results = []

    def work():
        for _ in range(20):
            results.append(kernels.normalize(grays)[0])

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 80
    for digits in results:
        np.testing.assert_array_equal(digits, expected)


def test_they_agree_when_the_frame_lies_on_the_middle_level():
    """A level exactly halfway between the darkest and the lightest is not on the dark
    side (numpy compares `level < middle`): here the top edge lies on it, and which side
    it counts for decides whether the digit fills the image."""
    gray = np.zeros((40, 40), np.uint8)
    gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1] = 100, 200, 200, 200
    assert_same(gray[np.newaxis])


def test_they_agree_when_an_edge_is_exactly_a_quarter_paper():
    """A digit fills the image only if each edge is more than a quarter paper: here the top
    edge is exactly a quarter (10 of its 40 pixels), so this one does not."""
    gray = np.zeros((40, 40), np.uint8)
    gray[-1], gray[1:-1, 0], gray[1:-1, -1] = 200, 200, 200
    gray[0, :10] = 200
    assert_same(gray[np.newaxis])


def test_the_server_normalises_with_the_compiled_loops(client, monkeypatch):
    """The app's start-up switches its process to app.kernels; an upload is then prepared
    by them (a spy counts the calls) and answered as before."""
    assert pp._kernels is kernels
    calls = []
    real = kernels.normalize
    monkeypatch.setattr(kernels, "normalize", lambda grays: calls.append(len(grays)) or real(grays))
    response = client.post("/predict", files={"file": ("seven.png", seven_png(), "image/png")})
    assert response.status_code == 200, response.text
    assert calls == [1]


def test_the_compiled_loops_can_be_turned_off(settings):
    """DIGITS_COMPILED_PREPROCESSING=false: numpy only (numba's memory saved)."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    try:
        with TestClient(create_app(settings.model_copy(
                update={"compiled_preprocessing": False}))) as numpy_only:
            assert pp._kernels is None
            response = numpy_only.post("/predict",
                                       files={"file": ("seven.png", seven_png(), "image/png")})
            assert response.status_code == 200, response.text
    finally:
        pp.use_compiled_kernels()


def test_they_agree_when_a_box_is_trimmed_at_exactly_its_share():
    """500 stroke pixels: 500 x 0.998 is exactly 499 in float64, and the row where 499 of
    them are reached ends the box (numpy counts rows short of the share with `<`), so
    the stray pixel further down stays outside it."""
    ink = np.zeros((1, 50, 50), np.float32)
    ink[0, 10:29, 10:35] = 255.0  # 19 rows of 25
    ink[0, 29, 10:34] = 255.0  # 24 more: 499
    ink[0, 40, 20] = 255.0  # the 500th
    boxes, sizes = kernels.boxes_and_sizes(ink, pp.WORKING_BOX, pp.STROKE_LEVEL, pp.CROP_TRIM)
    np.testing.assert_array_equal(boxes, pp.find_digit_boxes(ink))
    assert boxes[0, 1] == 29
