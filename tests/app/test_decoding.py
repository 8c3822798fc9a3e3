"""The trust boundary: headers priced before decoding, every format's decoding, and every
decoder failure turned into that image's own 4xx."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from app import decoding as dec
from tests.images import draw_one, encode

LIMITS = dec.DecodeLimits()


def decode(data: bytes, limits: dec.DecodeLimits = LIMITS) -> np.ndarray:
    return dec.decode(data, dec.inspect(data, limits))


def ink_box(pixels: np.ndarray, threshold: float = 0) -> tuple[int, int]:
    rows = np.where(pixels.max(axis=1) > threshold)[0]
    cols = np.where(pixels.max(axis=0) > threshold)[0]
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def chunk(kind: bytes, payload: bytes, length: int | None = None) -> bytes:
    return (struct.pack(">I", len(payload) if length is None else length) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload)))


def png_header_only(width: int, height: int) -> bytes:
    """A few hundred bytes that claim width x height pixels: a decompression bomb's shape."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (dec.PNG_SIGNATURE + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b""))


# --- formats ------------------------------------------------------------------------------

@pytest.mark.parametrize("format", ["PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF"])
def test_every_allowed_format_decodes(format):
    data = encode(draw_one().convert("RGB"), format)
    header = dec.inspect(data, LIMITS)
    assert (header.width, header.height) == (200, 300)
    gray = dec.decode(data, header)
    assert gray.shape == (300, 200) and gray.dtype == np.uint8
    assert gray[0, 0] > 200 and gray[150, 100] < 50


@pytest.mark.parametrize("format", ["PPM", "ICO", "TGA", "PCX", "SGI", "IM"])
def test_other_formats_are_refused_unread(format):
    with pytest.raises(dec.UnsupportedFormat, match="PNG, JPEG, WebP, GIF, BMP, TIFF"):
        dec.inspect(encode(draw_one().convert("RGB"), format), LIMITS)


def test_a_gif_decodes_its_first_frame():
    first = draw_one().convert("P")
    buffer = io.BytesIO()
    first.save(buffer, "GIF", save_all=True, append_images=[Image.new("P", (200, 300), 0)])
    assert decode(buffer.getvalue())[150, 100] < 50


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (encode(draw_one())[:60], "corrupt or truncated"),
    (dec.PNG_SIGNATURE + b"\0\0\0", "corrupt or truncated"),
    (b"\xff\xd8\xff\xe0\x00", "corrupt or truncated"),
    (b"GIF89a\x01\x00", "corrupt or truncated"),
])
def test_unusable_bytes_are_400(data, message):
    with pytest.raises(dec.ImageError, match=message) as raised:
        decode(data)
    assert raised.value.status_code == 400


# --- headers are priced before any pixel is decoded ---------------------------------------

def test_a_decompression_bomb_is_refused_from_its_header():
    bomb = png_header_only(60_000, 60_000)
    assert len(bomb) < 1000
    with pytest.raises(dec.ImageTooLarge, match="60000x60000"):
        dec.inspect(bomb, LIMITS)


def test_the_configured_pixel_limit_applies():
    with pytest.raises(dec.ImageTooLarge):
        dec.inspect(encode(draw_one()), dec.DecodeLimits(max_pixels=200 * 300 - 1))


def test_a_png_chunk_that_claims_more_bytes_than_sent_is_refused():
    # 67 bytes whose IDAT claims ~3 GB: OpenCV once allocated all of it.
    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    data = dec.PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", b"x", 3_000_000_000)
    with pytest.raises(dec.ImageError, match="claims 3,000,000,000 bytes"):
        dec.inspect(data, LIMITS)


def test_a_png_of_endless_chunks_is_refused():
    data = encode(draw_one())
    padded = data[:33] + chunk(b"tEXt", b"") * (dec.MAX_PNG_CHUNKS + 1) + data[33:]
    with pytest.raises(dec.ImageError, match="chunks"):
        dec.inspect(padded, LIMITS)


@pytest.mark.parametrize("mode, size, fits", [
    ("RGB", (5000, 4000), True),     # 95 MB at 5 bytes a pixel: fits in 96
    ("RGB", (5000, 4100), False),    # 98 MB
    ("L", (8000, 5000), True),       # 2 bytes a pixel: 80 MB
    ("I;16", (6000, 6000), False),   # 3 bytes a pixel: 108 MB
])
def test_memory_is_estimated_from_the_header(mode, size, fits):
    data = encode(Image.new(mode, size), "PNG")
    if fits:
        dec.inspect(data, LIMITS)
    else:
        with pytest.raises(dec.ImageTooLarge, match="MB to decode"):
            dec.inspect(data, LIMITS)


def test_a_small_webp_with_a_huge_canvas_is_413_before_decoding():
    data = encode(Image.new("L", (3000, 3000)), "WEBP", lossless=True)
    assert len(data) < 1000
    with pytest.raises(dec.ImageTooLarge, match="WebP"):
        dec.inspect(data, LIMITS)


def test_a_progressive_jpeg_is_priced_by_its_coefficients():
    image = Image.new("RGB", (4000, 4000))
    baseline = encode(image, "JPEG", quality=90, subsampling=0)
    progressive = encode(image, "JPEG", quality=90, subsampling=0, progressive=True)
    dec.inspect(baseline, LIMITS)  # decoded at half size, a row at a time: 19 MB
    with pytest.raises(dec.ImageTooLarge):  # and every coefficient kept: 111 MB
        dec.inspect(progressive, LIMITS)


def progressive_jpeg_with_scans(count: int) -> bytes:
    """A progressive JPEG whose last scan is repeated until it has `count` scans."""
    data = encode(draw_one().convert("RGB"), "JPEG", progressive=True)
    last_scan = data.rindex(b"\xff\xda")
    scans = data.count(b"\xff\xda")
    return data[:last_scan] + data[last_scan:-2] * (count - scans + 1) + b"\xff\xd9"


def test_a_jpeg_with_thousands_of_scans_is_refused():
    dec.inspect(progressive_jpeg_with_scans(dec.MAX_JPEG_SCANS), LIMITS)
    with pytest.raises(dec.ImageTooLarge, match="scans"):
        dec.inspect(progressive_jpeg_with_scans(3000), LIMITS)


def test_run_length_bmps_are_refused():
    data = bytearray(encode(draw_one().convert("P"), "BMP"))
    data[30:34] = struct.pack("<I", 1)  # BI_RLE8
    with pytest.raises(dec.UnsupportedFormat, match="RLE"):
        dec.inspect(bytes(data), LIMITS)


def test_a_gif_of_endless_blocks_is_refused():
    data = encode(draw_one().convert("P"), "GIF")
    at = 13 + 3 * 2 ** ((data[10] & 7) + 1)  # after the global colour table
    comment = b"\x21\xfe" + b"\x01x" * (dec.MAX_GIF_BLOCKS + 1) + b"\x00"
    with pytest.raises(dec.ImageError, match="blocks"):
        dec.inspect(data[:at] + comment + data[at:], LIMITS)


def test_tiff_compressions_outside_the_list_are_415():
    data = encode(draw_one(), "TIFF", compression="tiff_lzw")
    dec.inspect(data, LIMITS)
    entry = data.index(struct.pack("<HHI", 259, 3, 1))
    patched = data[:entry + 8] + struct.pack("<H", 34712) + data[entry + 10:]  # JPEG 2000
    with pytest.raises(dec.UnsupportedFormat, match="compression 34712"):
        dec.inspect(patched, LIMITS)


def test_a_tiff_tag_pointing_past_the_end_is_refused():
    data = encode(draw_one().convert("RGB"), "TIFF")
    with pytest.raises(dec.ImageError, match="corrupt or truncated"):
        dec.inspect(data[: len(data) // 2], LIMITS)


# --- every decoder failure is the image's own 4xx -----------------------------------------

@pytest.mark.parametrize("raised, status", [
    (TypeError("fuzzed"), 400), (KeyError(7), 400), (MemoryError(), 413),
    (Image.DecompressionBombError("big"), 413), (OSError("broken data stream"), 400),
])
def test_any_decoder_exception_becomes_an_image_error(monkeypatch, raised, status):
    data = encode(draw_one().convert("RGB"), "TIFF")
    header = dec.inspect(data, LIMITS)

    def explode(*args, **kwargs):
        raise raised

    monkeypatch.setattr(dec.Image, "open", explode)
    with pytest.raises(dec.ImageError) as error:
        dec.decode(data, header)
    assert error.value.status_code == status


def test_a_header_that_disagrees_with_the_decoder_is_refused():
    data = bytearray(encode(draw_one().convert("RGB"), "BMP"))
    # Pillow reads the BMP's size from the same place: corrupt the TIFF-style check by
    # giving the decoder a different file than the header read.
    header = dec.inspect(bytes(data), LIMITS)
    other = encode(Image.new("RGB", (10, 10)), "BMP")
    with pytest.raises(dec.ImageError, match="header says 200x300"):
        dec.decode(other, header)
    assert header.format == "BMP"


# --- orientation, transparency, depth -----------------------------------------------------

def test_the_exif_rotation_is_applied():
    image = draw_one(size=(300, 200), box=(40, 90, 260, 110))  # a horizontal bar
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    gray = decode(encode(image.convert("RGB"), "JPEG", exif=exif.tobytes()))
    assert gray.shape == (300, 200)
    assert ink_box(255 - gray, 128) == (221, 21)  # the bar now stands upright


def test_a_large_image_is_shrunk_then_rotated():
    image = draw_one(size=(3000, 2000), box=(400, 900, 2600, 1100))
    exif = Image.Exif()
    exif[0x0112] = 8
    gray = decode(encode(image.convert("RGB"), "PNG", exif=exif.tobytes()))
    assert gray.shape == (1024, 683)
    height, width = ink_box(255 - gray, 128)
    assert height > 5 * width


def test_dark_strokes_on_transparent_black_go_onto_white():
    rgba = np.zeros((100, 100, 4), dtype=np.uint8)  # transparent *black*, as canvases export
    rgba[20:80, 45:55] = (10, 10, 10, 255)
    flat = np.asarray(dec.flatten_transparency(Image.fromarray(rgba, "RGBA")).convert("L"))
    assert flat[0, 0] == 255 and flat[50, 50] == 10
    # The naive conversion loses the digit entirely: black on black.
    naive = np.asarray(Image.fromarray(rgba, "RGBA").convert("L"))
    assert naive[0, 0] == naive[50, 50] == 10 or naive.max() - naive.min() < 16


def test_light_strokes_go_onto_black():
    rgba = np.zeros((100, 100, 4), dtype=np.uint8)
    rgba[20:80, 45:55] = (250, 250, 250, 255)
    flat = np.asarray(dec.flatten_transparency(Image.fromarray(rgba, "RGBA")).convert("L"))
    assert flat[0, 0] == 0 and flat[50, 50] == 250


def test_an_opaque_image_stays_as_it_is():
    image = draw_one(mode="RGB", ink=(0, 0, 0), paper=(255, 255, 255)).convert("RGBA")
    assert dec.flatten_transparency(image).mode == "RGB"


def test_grayscale_uses_luminance():
    assert dec.to_grayscale(Image.new("RGB", (4, 4), (0, 0, 255)))[0, 0] == pytest.approx(29, abs=1)


def test_a_16_bit_scan_keeps_its_contrast():
    pixels = np.full((300, 200), 30_000, dtype=np.uint16)
    pixels[40:260, 90:110] = 2_000
    gray = decode(encode(Image.fromarray(pixels)))
    assert gray[0, 0] == 255 and gray[150, 100] == 0


# --- the plain-PNG fast path --------------------------------------------------------------

@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("size", [(28, 28), (1, 1), (301, 97), (1024, 700)])
def test_a_plain_png_decodes_exactly_as_pillow_decodes_it(mode, size):
    rng = np.random.default_rng(sum(size))
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    data = encode(Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode))
    header = dec.inspect(data, LIMITS)
    assert header.simple and header.fast_png
    fast = dec._decode_fast_png(data, header)
    assert fast is not None and fast.dtype == np.uint8
    np.testing.assert_array_equal(fast, dec._decode_with_pillow(data, header))


def png_with_chunk(image: Image.Image, chunk_type: bytes, payload: bytes) -> bytes:
    """`image` as PNG with one extra chunk right after IHDR."""
    data = encode(image)
    return data[:33] + chunk(chunk_type, payload) + data[33:]


@pytest.mark.parametrize("make, simple", [
    (lambda: encode(Image.new("RGBA", (20, 20))), True),                # alpha
    (lambda: encode(Image.new("LA", (20, 20))), True),
    (lambda: encode(Image.new("P", (20, 20))), True),                   # palette
    (lambda: encode(Image.new("L", (20, 20)), transparency=0), True),   # tRNS
    (lambda: png_with_chunk(Image.new("L", (20, 20)), b"eXIf",
                            b"MM\x00*\x00\x00\x00\x08\x00\x00"), True),
    (lambda: encode(Image.new("I;16", (20, 20))), False),               # 16-bit
    (lambda: encode(Image.new("L", (1025, 10))), False),                # needs shrinking
    (lambda: encode(Image.new("L", (20, 20)), "JPEG"), False),          # not a PNG
], ids=["rgba", "la", "palette", "trns", "exif", "16-bit", "large", "jpeg"])
def test_anything_but_a_plain_png_takes_the_general_path(make, simple):
    header = dec.inspect(make(), LIMITS)
    assert not header.fast_png
    assert header.simple == simple  # small plain PNGs are still decoded in the server


def test_a_truncated_plain_png_is_refused():
    data = encode(draw_one())
    with pytest.raises(dec.ImageError, match="corrupt or truncated"):
        decode(data[: len(data) // 2])


@pytest.mark.parametrize("transparent", [0, 1])
def test_a_large_bilevel_image_with_a_transparent_value_shrinks_as_it_would_whole(transparent):
    # Shrunk through grey bands (five times cheaper), with its alpha derived afterwards:
    # the same pixels as converting the whole image to grey + alpha first.
    rng = np.random.default_rng(transparent)
    ink = rng.random((2600, 1900)) < 0.03
    ink[600:1800, 700:1100] = True
    data = encode(Image.fromarray(ink).convert("1"), "PNG", transparency=transparent)
    decoded = dec.decode(data, dec.inspect(data, dec.DecodeLimits()))
    whole = Image.open(io.BytesIO(data)).convert("LA")
    expected = whole.reduce(2).resize(decoded.shape[::-1], Image.Resampling.BOX)
    expected = dec.to_grayscale(dec.flatten_transparency(expected))
    assert decoded.shape == (1024, 748)
    assert np.abs(decoded.astype(int) - expected.astype(int)).max() <= 1


# --- refusing from the first bytes --------------------------------------------------------

def every_format_photo() -> list[bytes]:
    """Larger, legitimate images of each format (several hundred KB): none is refused."""
    rng = np.random.default_rng(7)
    noise = Image.fromarray(rng.integers(0, 256, (700, 900, 3), dtype=np.uint8))
    return [encode(noise, "PNG"), encode(noise, "JPEG", quality=95, progressive=True),
            encode(noise, "JPEG", quality=95), encode(noise, "BMP"), encode(noise, "TIFF"),
            encode(noise.convert("P"), "GIF"), encode(noise, "WEBP", lossless=True)]


@pytest.mark.parametrize("data", every_format_photo(), ids=lambda d: d[:4].hex())
def test_no_start_of_an_acceptable_image_is_refused(data):
    dec.inspect(data, LIMITS)
    for cut in (16, 100, 1000, 65_536, 262_144, len(data) - 1):
        dec.inspect_prefix(data[:cut], LIMITS)  # raises nothing


def test_a_start_already_over_a_count_is_refused_as_the_whole_would_be():
    bombs = png_header_only(28, 28)[:33] + chunk(b"zTXt", b"k\0\0" + b"x" * 5000) * 40
    with pytest.raises(dec.ImageTooComplex):
        dec.inspect(bombs + chunk(b"IEND", b""), LIMITS)
    with pytest.raises(dec.ImageTooComplex):
        dec.inspect_prefix(bombs[:100_000], LIMITS)


def test_a_start_that_shows_too_many_scans_or_another_format_is_refused():
    with pytest.raises(dec.ImageTooLarge, match="scans"):
        dec.inspect_prefix(progressive_jpeg_with_scans(3000)[:262_144], LIMITS)
    with pytest.raises(dec.UnsupportedFormat):
        dec.inspect_prefix(b"\0" * 300_000, LIMITS)
