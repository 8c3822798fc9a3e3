"""Each normalisation step, and the whole pipeline, on images the tests draw themselves."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from app import preprocessing as pp
from app.decoding import DecodeLimits, ImageError, UnsupportedFormat
from tests.images import draw_one, encode, seven

LIMITS = DecodeLimits()


@pytest.fixture(autouse=True, params=["numpy", "compiled"])
def normalisation(request, monkeypatch):
    """Every test here runs with both normalisations: numpy's (the decoder processes) and
    the compiled loops of app.kernels (the server processes)."""
    from app import kernels

    if request.param == "compiled":
        kernels.warm_up()
    monkeypatch.setattr(pp, "_kernels", kernels if request.param == "compiled" else None)


def center_of_mass(pixels: np.ndarray) -> tuple[float, float]:
    rows, cols = np.indices(pixels.shape)
    total = pixels.sum()
    return (rows * pixels).sum() / total, (cols * pixels).sum() / total


def ink_box(pixels: np.ndarray, threshold: float = 0) -> tuple[int, int]:
    rows = np.where(pixels.max(axis=1) > threshold)[0]
    cols = np.where(pixels.max(axis=0) > threshold)[0]
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


# --- polarity -----------------------------------------------------------------------------

def light_on_dark(gray: np.ndarray) -> np.ndarray:
    """`to_light_on_dark` on one image, which must hold a digit."""
    ink, found = pp.to_light_on_dark(gray[np.newaxis])
    assert found.tolist() == [True]
    return ink[0]


def test_dark_ink_on_white_is_inverted():
    ink = light_on_dark(np.asarray(draw_one()))
    assert ink[0, 0] == 0 and ink[150, 100] == 255


def test_light_ink_on_black_is_kept():
    ink = light_on_dark(np.asarray(draw_one(ink=255, paper=0)))
    assert ink[0, 0] == 0 and ink[150, 100] == 255


def test_grey_paper_becomes_black_and_ink_full_white():
    ink = light_on_dark(np.asarray(draw_one(ink=60, paper=170)))
    assert ink[0, 0] == 0 and ink[150, 100] == 255


def test_noise_on_the_paper_is_dropped():
    rng = np.random.default_rng(1)
    page = np.asarray(draw_one(ink=40, paper=200), dtype=np.float32) + rng.normal(0, 4, (300, 200))
    ink = light_on_dark(np.uint8(np.clip(page, 0, 255)))
    assert np.mean(ink[:30] > 0) < 0.05


def test_a_blank_page_has_no_digit():
    _, found = pp.to_light_on_dark(np.full((1, 50, 50), 200, dtype=np.uint8))
    assert found.tolist() == [False]
    with pytest.raises(ImageError, match="No digit"):
        pp.preprocess(encode(Image.new("L", (50, 50), 200)))


@pytest.mark.parametrize("page", ["gradient", "steep gradient", "grainy paper", "noise"])
def test_shaded_or_grainy_blank_pages_have_no_digit(page):
    rng = np.random.default_rng(0)
    across = np.indices((280, 280))[1] / 280
    pixels = {"gradient": 200 + 40 * across, "steep gradient": 150 + 100 * across,
              "grainy paper": rng.normal(220, 8, (280, 280)),
              "noise": rng.normal(128, 40, (280, 280))}[page]
    _, found = pp.to_light_on_dark(np.uint8(np.clip(np.round(pixels), 0, 255))[np.newaxis])
    assert found.tolist() == [False]


@pytest.mark.parametrize("shape", [(1, 0, 5), (2, 5, 0)])
def test_an_image_without_pixels_has_no_digit(shape):
    # The decoders never give one (headers claiming no pixels are refused); if one did, it
    # would be "no digit", not an error inside the polarity step.
    digits, found = pp.normalize(np.zeros(shape, np.uint8))
    assert len(digits) == 0 and not found.any()


def test_a_digit_under_a_side_light_is_found():
    page = np.asarray(draw_one(size=(200, 200), box=(90, 40, 105, 160)), dtype=np.float32)
    lit = page * (1 - 0.45 * np.indices(page.shape)[1] / 200) * 0.92
    ink = light_on_dark(np.uint8(np.clip(lit, 0, 255)))
    assert ink[100, 97] > 250 and ink[100, 30] == 0 and ink[100, 180] == 0


def test_a_heavy_digit_filling_its_frame_keeps_paper_as_background():
    # A thick 0 cropped to its ink: 60% of the pixels are ink, touching every edge.
    rows, cols = np.indices((100, 80))
    ring = np.hypot((rows - 49.5) / 50, (cols - 39.5) / 40)
    page = np.where((ring > 0.45) & (ring < 1.05), 10, 240).astype(np.uint8)
    assert np.mean(page == 10) > 0.55
    ink = light_on_dark(page)
    assert ink[50, 40] == 0 and ink[50, 3] == 255 and ink[0, 0] == 0


def test_each_image_in_a_stack_gets_its_own_polarity():
    stack = np.stack([np.asarray(draw_one()), np.asarray(draw_one(ink=255, paper=0)),
                      np.full((300, 200), 90, dtype=np.uint8)])
    ink, found = pp.to_light_on_dark(stack)
    assert found.tolist() == [True, True, False]
    assert ink[0, 150, 100] == ink[1, 150, 100] == 255 and ink[0, 0, 0] == ink[1, 0, 0] == 0


# --- pen width ----------------------------------------------------------------------------

def stroke(width: int) -> np.ndarray:
    """A 40 px working-size '1': a vertical stroke `width` px wide, at full strength."""
    digit = np.zeros((40, 40), np.float32)
    digit[:, 20 - width // 2: 20 - width // 2 + width] = 255
    return digit


@pytest.mark.parametrize("width", [3, 5, 9, 13])
def test_stroke_width_measures_the_pen(width):
    assert abs(pp.stroke_width(stroke(width)) - width) <= 1.0


def test_a_filled_loop_does_not_pass_for_a_thick_pen():
    # A 9 whose loop is filled: a disc on a thin stem. Its pen is the stem's.
    digit = stroke(3)
    rows, cols = np.indices(digit.shape)
    digit[np.hypot(rows - 10, cols - 15) < 9] = 255
    assert abs(pp.stroke_width(digit) - 3) <= 1.0


def test_pens_in_a_stack_are_measured_and_restroked_as_alone():
    # OpenCV gets the stack as one tall image: strokes touching the edges of neighbouring
    # images, and pens from hairline to felt, must not reach across.
    rng = np.random.default_rng(7)
    digits = []
    for width in (1, 2, 3, 5, 9, 13, 17, 21):
        digit = np.zeros((40, 40), np.float32)
        left = int(rng.integers(0, 40 - width + 1))
        digit[:, left: left + width] = 255
        digit[rng.integers(0, 40 - width + 1, 1)[0]:][:width] = 255  # a bar to an edge
        digits.append(digit)
    stack = np.stack(digits)
    widths = pp.stroke_widths(stack)
    assert (widths < pp.THIN_STROKE).any() and (widths > 3 * pp.MNIST_STROKE).any()
    np.testing.assert_array_equal(widths, [pp.stroke_width(d) for d in digits])
    restroked = pp.normalize_strokes(stack)
    for i, digit in enumerate(digits):
        np.testing.assert_array_equal(restroked[i], pp.normalize_strokes(digit[np.newaxis])[0])


def test_a_hairline_is_thickened_towards_mnist_and_a_felt_pen_kept():
    # Thinning a felt pen erodes heavy digits' loops shut; the models learnt thick pens.
    thick, thin = pp.normalize_strokes(np.stack([stroke(15), stroke(1)]))
    assert abs((thin[20] > 127).sum() - pp.MNIST_STROKE) <= 2.5
    np.testing.assert_array_equal(thick[4:-4, 4:-4], stroke(15))


# --- crop, scale, centre ------------------------------------------------------------------

@pytest.mark.parametrize("rows", [1, 4, 40])  # compared whole, then searched
def test_counting_below_targets_matches_a_search_of_each_row(rows):
    # The batched search lifts each row above the last: it must answer as each row alone.
    rng = np.random.default_rng(3)
    counts = rng.integers(0, 50, (rows, 256)) * (rng.random((rows, 256)) < 0.3)
    counts[0] = 0  # an empty row
    cumulative = np.cumsum(counts, axis=1)
    targets = np.concatenate([np.zeros((rows, 1)), cumulative[:, -1:] * rng.random((rows, 3)),
                              cumulative[:, -1:], cumulative[:, -1:] + 0.5], axis=1)
    expected = [[np.searchsorted(row, target) for target in row_targets]
                for row, row_targets in zip(cumulative, targets, strict=True)]
    assert pp._count_below(cumulative, targets).tolist() == expected


def test_the_box_holds_the_digit():
    ink = np.zeros((1, 300, 200), dtype=np.float32)
    ink[0, 40:261, 90:111] = 255
    assert pp.find_digit_boxes(ink).tolist() == [[40, 260, 90, 110]]


def test_the_box_ignores_a_far_speck():
    ink = np.zeros((1, 300, 300), dtype=np.float32)
    ink[0, 40:260, 90:150] = 255
    ink[0, 295, 295] = 255  # a speck of dust in the corner
    assert pp.find_digit_boxes(ink).tolist() == [[40, 259, 90, 149]]


def test_fit_in_box_keeps_the_aspect_ratio():
    ink = np.zeros((1, 300, 100), dtype=np.float32)
    ink[0, 30:250, 20:80] = 255
    fitted, sizes = pp.fit_in_box(ink, np.array([[30, 249, 20, 79]]))
    assert sizes.tolist() == [[20, 5]]
    assert fitted.shape == (1, 20, 20) and fitted.max() == pytest.approx(255)
    assert not fitted[0, :, 5:].any()  # beside the digit: nothing


@pytest.mark.parametrize("shape", [(28, 28), (20, 7), (300, 41), (57, 640)])
def test_fit_in_box_scales_as_pillow_does(shape):
    rng = np.random.default_rng(3)
    digit = rng.uniform(0, 255, shape).astype(np.float32)
    fitted, sizes = pp.fit_in_box(digit[np.newaxis], np.array([[0, shape[0] - 1, 0, shape[1] - 1]]))
    height, width = sizes[0]
    pillow = np.asarray(Image.fromarray(digit, mode="F").resize(
        (int(width), int(height)), Image.Resampling.LANCZOS), dtype=np.float32)
    pillow = np.clip(pillow, 0, 255)
    pillow *= 255 / pillow.max()
    np.testing.assert_allclose(fitted[0, :height, :width], pillow, atol=0.05)


def test_center_by_mass_places_the_mass_where_mnist_does():
    fitted = np.zeros((1, 20, 20), dtype=np.float32)
    fitted[0, :, :3] = 255  # a 20 x 10 digit, its mass on the left: the box must go right
    field = pp.center_by_mass(fitted, np.array([[20, 10]]))
    assert field.shape == (1, 28, 28) and field.dtype == np.uint8
    row, col = center_of_mass(field[0].astype(float))
    assert abs(row - 14) <= 0.5 and abs(col - 14) <= 0.5


# --- the whole pipeline -------------------------------------------------------------------

def test_a_large_off_centre_drawing_comes_out_in_mnist_format():
    page = draw_one(size=(600, 400), box=(40, 30, 70, 250))  # top-left corner, dark on white
    pixels = pp.preprocess(encode(page))
    assert pixels.shape == (28, 28) and pixels.dtype == np.uint8
    assert pixels[0, 0] == 0 and pixels.max() == 255
    assert ink_box(pixels)[0] == 20
    row, col = center_of_mass(pixels.astype(float))
    assert abs(row - 14) <= 0.5 and abs(col - 14) <= 0.5


def test_an_mnist_format_digit_keeps_its_shape():
    digit = seven()
    pixels = pp.preprocess(encode(Image.fromarray(digit)))
    # Same digit, resized to MNIST's 20 px box: the ink overlaps the original almost entirely.
    overlap = np.minimum(pixels > 64, digit > 64).sum() / (digit > 64).sum()
    assert overlap > 0.6
    assert max(ink_box(pixels)) == 20


def test_canvas_export_and_its_naive_conversion_differ():
    rgba = np.zeros((280, 280, 4), dtype=np.uint8)
    big_seven = np.asarray(Image.fromarray(seven()).resize((280, 280), Image.Resampling.BICUBIC))
    rgba[..., 3] = big_seven  # black strokes, transparent elsewhere
    pixels = pp.preprocess(encode(Image.fromarray(rgba, "RGBA")))
    overlap = np.minimum(pixels > 64, seven() > 64).sum() / (seven() > 64).sum()
    assert overlap > 0.6


def test_a_batch_gives_each_image_what_it_gets_alone():
    images = [encode(draw_one()), encode(draw_one(ink=255, paper=0)), b"not an image",
              encode(Image.new("L", (300, 200), 128)), encode(Image.fromarray(seven())),
              encode(draw_one(size=(600, 400), box=(40, 30, 70, 250)), "JPEG")]
    together = pp.prepare_images(images, LIMITS)
    for data, result in zip(images, together, strict=True):
        [alone] = pp.prepare_images([data], LIMITS)
        if isinstance(alone, ImageError):
            assert type(result) is type(alone) and str(result) == str(alone)
        else:
            np.testing.assert_array_equal(result, alone)
    assert [isinstance(r, ImageError) for r in together] == [False, False, True, True, False,
                                                             False]
    assert isinstance(together[2], UnsupportedFormat)


def test_a_batch_of_large_images_is_normalised_a_few_at_a_time(monkeypatch):
    # Decoded images are flushed once they hold MAX_PENDING_PIXELS, so a batch of big
    # images never holds all of their pixels at once; the results are the same.
    page = encode(draw_one(size=(600, 400), box=(40, 30, 70, 250)))
    whole = pp.prepare_images([page] * 6, LIMITS)
    monkeypatch.setattr(pp, "MAX_PENDING_PIXELS", 2 * 600 * 400)
    stacks = []
    original = pp.normalize
    monkeypatch.setattr(pp, "normalize", lambda grays: stacks.append(len(grays))
                        or original(grays))
    parts = pp.prepare_images([page] * 6, LIMITS)
    assert stacks == [2, 2, 2]
    for a, b in zip(whole, parts, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_failure_while_normalising_a_stack_stays_with_its_image(monkeypatch):
    original = pp.normalize

    def fragile(grays):
        if len(grays) > 1 or grays.max() == 255 and grays.min() == 0 and grays[0, 0, 0] == 0:
            raise FloatingPointError("scripted")
        return original(grays)

    monkeypatch.setattr(pp, "normalize", fragile)
    light = encode(draw_one(ink=255, paper=0))  # its first pixel is 0: fails alone too
    dark, failed = pp.prepare_images([encode(draw_one()), light], LIMITS)
    assert isinstance(dark, np.ndarray)
    assert isinstance(failed, ImageError) and "could not be prepared" in str(failed)
