"""Turning a real-world image into the 28x28 MNIST-format digit the models were trained on.

Pure functions from bytes to numpy arrays, one per step, no web framework objects:

    decode -> orient -> shrink -> flatten_transparency -> to_grayscale -> to_light_on_dark
           -> crop_to_digit -> fit_in_box -> center_by_mass

MNIST digits are light strokes on a black background, scaled so the longest side is 20 px
and placed in a 28x28 field so that their centre of mass is in the middle. Phone photos,
scans and canvas exports are none of that; each step below undoes one difference.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from digit_contract import IMAGE_SIZE

DIGIT_BOX = 20
"""MNIST scales each digit so its longest side is 20 px."""

WORKING_SIZE = 1024
"""Larger images are shrunk to this longest side first: plenty for a 20 px digit, and fast."""

# Below this spread between background and ink there is no digit to read, only a blank page.
MIN_CONTRAST = 24.0

# Pixels at least this bright (after contrast stretching to 0..255) count as strokes.
STROKE_LEVEL = 64.0

# The bounding box ignores this fraction of stroke pixels at each end, so a speck of dust or a paper
# edge far from the digit does not shrink the digit to nothing.
CROP_TRIM = 0.002


class ImageError(ValueError):
    """The upload is not a usable image; the message says why (HTTP 400)."""


class ImageTooLarge(ImageError):
    """The image's pixel dimensions exceed the configured limit (HTTP 413)."""


def preprocess(data: bytes, max_pixels: int) -> np.ndarray:
    """Run every step on one encoded image: a uint8 [28, 28] digit, light on dark."""
    image = shrink(orient(decode(data, max_pixels)))
    gray = to_grayscale(flatten_transparency(image))
    ink = to_light_on_dark(gray)
    return center_by_mass(fit_in_box(crop_to_digit(ink)))


def prepare_images(blobs: list[bytes], max_pixels: int) -> list[np.ndarray | ImageError]:
    """Each encoded image as uint8 [28, 28], or the ImageError that rejected it."""
    prepared: list[np.ndarray | ImageError] = []
    for data in blobs:
        try:
            prepared.append(preprocess(data, max_pixels))
        except ImageError as error:
            prepared.append(error)
    return prepared


def decode(data: bytes, max_pixels: int) -> Image.Image:
    """Decode anything Pillow reads; reject empty, corrupt, truncated and oversized images.

    The pixel limit is checked from the header, before any pixel is decoded, so a small
    file that claims huge dimensions (a decompression bomb) costs nothing. Pillow's own
    guard (`Image.MAX_IMAGE_PIXELS`, set by `set_pillow_pixel_limit`) stops bombs hidden
    deeper, such as in a later frame.
    """
    if not data:
        raise ImageError("The image is empty (0 bytes).")
    with _decoding_errors():
        image = Image.open(io.BytesIO(data))
    if image.width * image.height > max_pixels:
        raise ImageTooLarge(f"The image is {image.width}x{image.height} pixels; the limit is "
                            f"{max_pixels:,} pixels. Send a smaller image.")
    if image.format == "JPEG":
        # Let the JPEG decoder skip detail we would throw away (much faster for photos).
        image.draft(image.mode, (WORKING_SIZE, WORKING_SIZE))
    with _decoding_errors():
        image.load()
    return image


@contextlib.contextmanager
def _decoding_errors():
    """Translate Pillow's many decoding exceptions into ImageError and ImageTooLarge."""
    try:
        yield
    except Image.DecompressionBombError as error:
        raise ImageTooLarge(f"The image is too large to decode safely: {error}") from error
    except UnidentifiedImageError as error:
        raise ImageError("The data is not an image format this service reads "
                         "(PNG, JPEG, BMP, GIF, WebP, TIFF).") from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageError(f"The image is corrupt or truncated: {error}") from error


def set_pillow_pixel_limit(max_pixels: int) -> None:
    """Make Pillow's process-wide decompression-bomb limit match the service's own."""
    Image.MAX_IMAGE_PIXELS = max_pixels


def orient(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag, as phone cameras expect viewers to."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - a malformed EXIF block should not lose the image
        return image


def shrink(image: Image.Image) -> Image.Image:
    if max(image.size) <= WORKING_SIZE:
        return image
    image = image.copy()
    image.thumbnail((WORKING_SIZE, WORKING_SIZE), Image.Resampling.BOX)
    return image


def flatten_transparency(image: Image.Image) -> Image.Image:
    """Composite a transparent image onto a background that contrasts with its strokes.

    A canvas export is dark strokes on fully transparent (often transparent *black*)
    pixels: dropping alpha would put black strokes on black. The visible pixels' own
    brightness decides the background: dark strokes go on white, light strokes on black.
    """
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode not in ("RGBA", "LA", "PA", "La", "RGBa"):
        return image
    rgba = image.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
    if alpha.min() > 0.98:
        return rgba.convert("RGB")
    luminance = np.asarray(rgba.convert("L"), dtype=np.float32)
    visible = alpha > 0.5
    stroke_level = float(luminance[visible].mean()) if visible.any() else 0.0
    background_level = 255 if stroke_level < 128 else 0
    background = Image.new("RGBA", rgba.size, (background_level,) * 3 + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_grayscale(image: Image.Image) -> np.ndarray:
    """Luminance as uint8 [H, W] (ITU-R 601 weights, as Pillow's "L")."""
    if image.mode != "L":
        image = image.convert("RGB").convert("L")
    return np.asarray(image, dtype=np.uint8)


def to_light_on_dark(gray: np.ndarray) -> np.ndarray:
    """Make the digit light on a black background and stretch its contrast to 0..255.

    The background is the most common level (the median: a digit covers far less than half
    of a sensible picture). Ink is whichever extreme lies further from it, so dark ink on
    grey paper and white chalk on a blackboard both come out as MNIST does.
    """
    levels = _LevelCounts(gray)
    # Near-extremes rather than min/max, so a few stray pixels can't decide; near enough
    # to the ends that a thin pen stroke on a big page (well under 1% of it) still counts.
    low, background, high = levels.quantiles(0.0002, 0.5, 0.9998)
    inverted = (background - low) > (high - background)
    # Paper texture and sensor noise sit a few levels off the background; drop them.
    noise = 3.0 * 1.4826 * levels.median_deviation(background)
    ink = gray.astype(np.float32)
    ink = (background - noise) - ink if inverted else ink - (background + noise)
    np.clip(ink, 0.0, None, out=ink)
    peak = float(ink.max())
    if peak < MIN_CONTRAST:
        raise ImageError("No digit found: the image is blank or has almost no contrast.")
    return ink * np.float32(255.0 / peak)


_LEVELS = np.arange(256)


class _LevelCounts:
    """Order statistics of a uint8 image from its histogram: exact, and fast at any size."""

    def __init__(self, gray: np.ndarray):
        self.counts = np.bincount(gray.ravel(), minlength=256)
        self.cumulative = np.cumsum(self.counts)

    def quantiles(self, *qs: float) -> list[int]:
        return np.searchsorted(self.cumulative, np.array(qs) * self.cumulative[-1]).tolist()

    def median_deviation(self, center: int) -> float:
        deviations = np.abs(_LEVELS - center)
        by_deviation = np.cumsum(np.bincount(deviations, weights=self.counts, minlength=256))
        return float(np.searchsorted(by_deviation, 0.5 * by_deviation[-1]))


def crop_to_digit(ink: np.ndarray) -> np.ndarray:
    """Cut the image down to the digit's bounding box.

    The box is found from clearly inked pixels (a quarter of full strength or more), so
    faint noise spread over a whole page can't widen it.
    """
    strokes = ink >= STROKE_LEVEL
    rows = _trimmed_span(strokes.sum(axis=1))
    cols = _trimmed_span(strokes.sum(axis=0))
    return ink[rows[0]: rows[1] + 1, cols[0]: cols[1] + 1]


def _trimmed_span(profile: np.ndarray) -> tuple[int, int]:
    """First and last index holding strokes, ignoring CROP_TRIM of them at each end."""
    cumulative = np.cumsum(profile)
    total = cumulative[-1]
    first = int(np.searchsorted(cumulative, total * CROP_TRIM, side="right"))
    last = int(np.searchsorted(cumulative, total * (1.0 - CROP_TRIM), side="left"))
    return first, max(first, min(last, len(profile) - 1))


def fit_in_box(digit: np.ndarray, box: int = DIGIT_BOX) -> np.ndarray:
    """Scale so the longest side is `box` px, keeping the aspect ratio, peak back at 255."""
    height, width = digit.shape
    scale = box / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = Image.fromarray(digit.astype(np.float32), mode="F").resize(
        size, Image.Resampling.LANCZOS)
    fitted = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 255.0)
    peak = fitted.max()
    return fitted * (255.0 / peak) if peak > 0 else fitted


def center_by_mass(digit: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Place the digit in a size x size field with its centre of mass in the middle."""
    height, width = digit.shape
    row_mass, col_mass = digit.sum(axis=1), digit.sum(axis=0)
    total = row_mass.sum()
    center_row = row_mass @ np.arange(height) / total if total else (height - 1) / 2
    center_col = col_mass @ np.arange(width) / total if total else (width - 1) / 2
    # MNIST's centres of mass sit at (14.0, 14.0) in pixel indices (measured on the training
    # digits), half a pixel right of and below the geometric centre.
    middle = size / 2
    top = int(np.clip(round(middle - center_row), 0, size - height))
    left = int(np.clip(round(middle - center_col), 0, size - width))
    field = np.zeros((size, size), dtype=np.float32)
    field[top: top + height, left: left + width] = digit
    return np.round(field).astype(np.uint8)
