"""Each preprocessing step on images the tests draw themselves."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from app import preprocessing as pp
from tests.images import draw_one, encode, seven

MAX_PIXELS = 40_000_000


def center_of_mass(pixels: np.ndarray) -> tuple[float, float]:
    rows, cols = np.indices(pixels.shape)
    total = pixels.sum()
    return (rows * pixels).sum() / total, (cols * pixels).sum() / total


def ink_box(pixels: np.ndarray, threshold: float = 0) -> tuple[int, int]:
    rows = np.where(pixels.max(axis=1) > threshold)[0]
    cols = np.where(pixels.max(axis=0) > threshold)[0]
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


# --- decode -------------------------------------------------------------------------------

@pytest.mark.parametrize("format", ["PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF"])
def test_decode_reads_every_common_format(format):
    data = encode(draw_one().convert("RGB"), format)
    assert pp.decode(data, MAX_PIXELS).size == (200, 300)


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"definitely not an image", "not an image format"),
    (encode(draw_one())[:60], "corrupt or truncated"),
])
def test_decode_rejects_unusable_bytes(data, message):
    with pytest.raises(pp.ImageError, match=message):
        pp.decode(data, MAX_PIXELS)


def png_header_only(width: int, height: int) -> bytes:
    """A few hundred bytes that claim width x height pixels: a decompression bomb's shape."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload)))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b""))


def test_decode_refuses_a_decompression_bomb_before_decoding_it():
    bomb = png_header_only(60_000, 60_000)
    assert len(bomb) < 1000
    with pytest.raises(pp.ImageTooLarge, match="60000x60000|3600000000"):
        pp.decode(bomb, MAX_PIXELS)


def test_decode_applies_the_configured_pixel_limit():
    with pytest.raises(pp.ImageTooLarge):
        pp.decode(encode(draw_one()), max_pixels=200 * 300 - 1)


# --- orientation and transparency ---------------------------------------------------------

def test_orient_applies_the_exif_rotation():
    image = draw_one(size=(300, 200), box=(40, 90, 260, 110))  # a horizontal bar
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    data = encode(image.convert("RGB"), "JPEG", exif=exif.tobytes())
    oriented = pp.orient(pp.decode(data, MAX_PIXELS))
    assert oriented.size == (200, 300)
    gray = np.asarray(oriented.convert("L"))
    assert ink_box(255 - gray, 128) == (221, 21)  # the bar now stands upright


def test_flatten_puts_dark_strokes_on_transparent_black_onto_white():
    rgba = np.zeros((100, 100, 4), dtype=np.uint8)  # transparent *black*, as canvases export
    rgba[20:80, 45:55] = (10, 10, 10, 255)
    flat = np.asarray(pp.flatten_transparency(Image.fromarray(rgba, "RGBA")).convert("L"))
    assert flat[0, 0] == 255 and flat[50, 50] == 10
    # The naive conversion loses the digit entirely: black on black.
    naive = np.asarray(Image.fromarray(rgba, "RGBA").convert("L"))
    assert naive[0, 0] == naive[50, 50] == 10 or naive.max() - naive.min() < 16


def test_flatten_puts_light_strokes_on_black():
    rgba = np.zeros((100, 100, 4), dtype=np.uint8)
    rgba[20:80, 45:55] = (250, 250, 250, 255)
    flat = np.asarray(pp.flatten_transparency(Image.fromarray(rgba, "RGBA")).convert("L"))
    assert flat[0, 0] == 0 and flat[50, 50] == 250


def test_flatten_keeps_an_opaque_image():
    image = draw_one(mode="RGB", ink=(0, 0, 0), paper=(255, 255, 255)).convert("RGBA")
    assert pp.flatten_transparency(image).mode == "RGB"


def test_grayscale_uses_luminance():
    image = Image.new("RGB", (4, 4), (0, 0, 255))
    assert pp.to_grayscale(image)[0, 0] == pytest.approx(29, abs=1)


# --- the plain-PNG fast path --------------------------------------------------------------

def pillow_luminance(data: bytes) -> np.ndarray:
    """What the general (Pillow) path makes of an image, for comparison."""
    image = pp.orient(pp.decode(data, MAX_PIXELS))
    return pp.to_grayscale(pp.flatten_transparency(pp.shrink(image)))


@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("size", [(28, 28), (1, 1), (301, 97), (1024, 700)])
def test_a_plain_png_decodes_exactly_as_pillow_decodes_it(mode, size):
    rng = np.random.default_rng(sum(size))
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    data = encode(Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode))
    plain = pp.decode_plain_png(data, MAX_PIXELS)
    assert plain is not None and plain.dtype == np.uint8
    np.testing.assert_array_equal(plain, pillow_luminance(data))


def png_with_chunk(image: Image.Image, chunk_type: bytes, payload: bytes) -> bytes:
    """`image` as PNG with one extra chunk right after IHDR."""
    data = encode(image)
    chunk = (struct.pack(">I", len(payload)) + chunk_type + payload
             + struct.pack(">I", zlib.crc32(chunk_type + payload)))
    return data[:33] + chunk + data[33:]


@pytest.mark.parametrize("make", [
    lambda: encode(Image.new("RGBA", (20, 20))),                      # alpha
    lambda: encode(Image.new("LA", (20, 20))),
    lambda: encode(Image.new("P", (20, 20))),                         # palette
    lambda: encode(Image.new("I;16", (20, 20))),                      # 16-bit
    lambda: encode(Image.new("L", (20, 20)), transparency=0),         # tRNS
    lambda: png_with_chunk(Image.new("L", (20, 20)), b"eXIf", b"MM\x00*\x00\x00\x00\x08\x00\x00"),
    lambda: encode(Image.new("L", (1025, 10))),                       # needs shrinking
    lambda: encode(Image.new("L", (20, 20)), "JPEG"),                 # not a PNG
], ids=["rgba", "la", "palette", "16-bit", "trns", "exif", "large", "jpeg"])
def test_anything_but_a_plain_png_takes_the_general_path(make):
    assert pp.decode_plain_png(make(), MAX_PIXELS) is None


def test_the_fast_path_respects_the_pixel_limit():
    data = encode(Image.new("L", (100, 100)))
    assert pp.decode_plain_png(data, max_pixels=100 * 100 - 1) is None
    with pytest.raises(pp.ImageTooLarge):
        pp.preprocess(data, max_pixels=100 * 100 - 1)


def test_a_truncated_plain_png_is_still_refused():
    data = encode(draw_one())
    assert pp.decode_plain_png(data[: len(data) // 2], MAX_PIXELS) is None
    with pytest.raises(pp.ImageError, match="corrupt or truncated"):
        pp.preprocess(data[: len(data) // 2], MAX_PIXELS)


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
    with pytest.raises(pp.ImageError, match="No digit"):
        pp.preprocess(encode(Image.new("L", (50, 50), 200)), MAX_PIXELS)


def test_each_image_in_a_stack_gets_its_own_polarity():
    stack = np.stack([np.asarray(draw_one()), np.asarray(draw_one(ink=255, paper=0)),
                      np.full((300, 200), 90, dtype=np.uint8)])
    ink, found = pp.to_light_on_dark(stack)
    assert found.tolist() == [True, True, False]
    assert ink[0, 150, 100] == ink[1, 150, 100] == 255 and ink[0, 0, 0] == ink[1, 0, 0] == 0


# --- crop, scale, centre ------------------------------------------------------------------

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
    pixels = pp.preprocess(encode(page), MAX_PIXELS)
    assert pixels.shape == (28, 28) and pixels.dtype == np.uint8
    assert pixels[0, 0] == 0 and pixels.max() == 255
    assert ink_box(pixels)[0] == 20
    row, col = center_of_mass(pixels.astype(float))
    assert abs(row - 14) <= 0.5 and abs(col - 14) <= 0.5


def test_an_mnist_format_digit_keeps_its_shape():
    digit = seven()
    pixels = pp.preprocess(encode(Image.fromarray(digit)), MAX_PIXELS)
    # Same digit, resized to MNIST's 20 px box: the ink overlaps the original almost entirely.
    overlap = np.minimum(pixels > 64, digit > 64).sum() / (digit > 64).sum()
    assert overlap > 0.6
    assert max(ink_box(pixels)) == 20


def test_canvas_export_and_its_naive_conversion_differ():
    rgba = np.zeros((280, 280, 4), dtype=np.uint8)
    big_seven = np.asarray(Image.fromarray(seven()).resize((280, 280), Image.Resampling.BICUBIC))
    rgba[..., 3] = big_seven  # black strokes, transparent elsewhere
    pixels = pp.preprocess(encode(Image.fromarray(rgba, "RGBA")), MAX_PIXELS)
    overlap = np.minimum(pixels > 64, seven() > 64).sum() / (seven() > 64).sum()
    assert overlap > 0.6


def test_a_batch_gives_each_image_what_it_gets_alone():
    images = [encode(draw_one()), encode(draw_one(ink=255, paper=0)), b"not an image",
              encode(Image.new("L", (300, 200), 128)), encode(Image.fromarray(seven())),
              encode(draw_one(size=(600, 400), box=(40, 30, 70, 250)), "JPEG")]
    together = pp.prepare_images(images, MAX_PIXELS)
    for data, result in zip(images, together, strict=True):
        [alone] = pp.prepare_images([data], MAX_PIXELS)
        if isinstance(alone, pp.ImageError):
            assert type(result) is type(alone) and str(result) == str(alone)
        else:
            np.testing.assert_array_equal(result, alone)
    assert [isinstance(r, pp.ImageError) for r in together] == [False, False, True, True, False,
                                                                False]
