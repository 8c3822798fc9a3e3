"""Re-drawing MNIST digits the way people actually send them, for tests and figures.

Each function takes a uint8 [28, 28] MNIST digit (light on dark) and a random generator and
returns encoded image bytes: a scan, a canvas export, a phone photo, and so on.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter


def encode(image: Image.Image, format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def _upscaled_ink(digit: np.ndarray, size: int) -> np.ndarray:
    """The digit's ink (0..1) enlarged to size x size."""
    image = Image.fromarray(digit).resize((size, size), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(image, dtype=np.float32) / 255.0, 0.0, 1.0)


def mnist_png(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """The digit exactly as MNIST stores it."""
    return encode(Image.fromarray(digit))


def inverted(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """Dark ink on white, still 28x28."""
    return encode(Image.fromarray(255 - digit))


def upscaled(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """Black on white at a size people draw at."""
    size = int(rng.integers(112, 400))
    ink = _upscaled_ink(digit, size)
    return encode(Image.fromarray(np.uint8(255 * (1 - ink))))


def off_centre(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """Ink on a larger white page, somewhere away from the middle."""
    size = int(rng.integers(80, 200))
    width, height = int(rng.integers(size + 40, 3 * size)), int(rng.integers(size + 40, 2 * size))
    page = np.ones((height, width), dtype=np.float32)
    top, left = int(rng.integers(0, height - size)), int(rng.integers(0, width - size))
    page[top: top + size, left: left + size] -= _upscaled_ink(digit, size)
    return encode(Image.fromarray(np.uint8(255 * np.clip(page, 0, 1))))


def canvas_rgba(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """An HTML canvas export: dark strokes on transparent (black) pixels, RGBA PNG."""
    size = int(rng.integers(200, 420))
    alpha = np.uint8(255 * _upscaled_ink(digit, size))
    colour = rng.integers(0, 60, size=3)
    rgba = np.zeros((size, size, 4), dtype=np.uint8)
    rgba[..., :3] = colour
    rgba[..., 3] = alpha
    return encode(Image.fromarray(rgba, mode="RGBA"))


def coloured_photo(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A phone photo: blue ink on cream paper, uneven light, sensor noise, JPEG."""
    size = int(rng.integers(160, 320))
    margin = int(rng.integers(20, 120))
    height, width = size + 2 * margin, size + 2 * margin + int(rng.integers(0, 100))
    ink = np.zeros((height, width), dtype=np.float32)
    top, left = margin + int(rng.integers(-15, 15)), margin + int(rng.integers(-15, 15))
    ink[top: top + size, left: left + size] = _upscaled_ink(digit, size)
    paper = np.array([238, 232, 215], dtype=np.float32)
    pen = np.array([30, 40, 130], dtype=np.float32)
    light = np.linspace(0.8, 1.0, width, dtype=np.float32)[np.newaxis, :, np.newaxis]
    rgb = (paper * (1 - ink[..., None]) + pen * ink[..., None]) * light
    rgb += rng.normal(0, 4, size=rgb.shape)
    image = Image.fromarray(np.uint8(np.clip(rgb, 0, 255)), mode="RGB")
    return encode(image.filter(ImageFilter.GaussianBlur(0.8)), "JPEG", quality=80)


def grey_scan(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A greyscale JPEG scan: pencil on grey paper, digit small in the page."""
    size = int(rng.integers(60, 160))
    page_size = size * 3
    page = np.full((page_size, page_size), float(rng.integers(150, 210)), dtype=np.float32)
    top, left = int(rng.integers(0, page_size - size)), int(rng.integers(0, page_size - size))
    pencil = float(rng.integers(20, 70))
    region = page[top: top + size, left: left + size]
    ink = _upscaled_ink(digit, size)
    page[top: top + size, left: left + size] = region * (1 - ink) + pencil * ink
    page += rng.normal(0, 3, size=page.shape)
    return encode(Image.fromarray(np.uint8(np.clip(page, 0, 255))), "JPEG", quality=70)


REAL_WORLD: dict[str, Callable[[np.ndarray, np.random.Generator], bytes]] = {
    "inverted": inverted,
    "upscaled": upscaled,
    "off_centre": off_centre,
    "canvas_rgba": canvas_rgba,
    "coloured_photo": coloured_photo,
    "grey_scan": grey_scan,
}
"""The ways of sending a digit that a tutorial-style service gets wrong."""


# --- pens, writers and scanners unlike MNIST's (the failure classes of real handwriting) ----

def _pen(ink: np.ndarray, radius: int) -> np.ndarray:
    """The same strokes drawn with a pen `radius` px wider (dilation) or narrower (erosion)."""
    import cv2

    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * abs(radius) + 1,) * 2)
    return cv2.dilate(ink, disc) if radius > 0 else cv2.erode(ink, disc)


def _tight(ink: np.ndarray) -> np.ndarray:
    """Cropped to the ink's bounding box, as postal and form digits are."""
    rows, cols = np.nonzero(ink > 0.5)
    return ink[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1]


def _dark_on_white(ink: np.ndarray) -> bytes:
    return encode(Image.fromarray(np.uint8(255 * (1 - np.clip(ink, 0, 1)))))


def heavy_ink(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A felt-tip digit cropped tight: ink covers about half the frame and touches each edge."""
    ink = _pen(_upscaled_ink(digit, 112), int(rng.integers(5, 9)))
    return _dark_on_white(_tight(ink))


def two_level(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A thresholded form scan: black and white only, a thick pen, nearest-neighbour scaled."""
    ink = _pen(_upscaled_ink(digit, 32), 1) > 0.5
    big = np.kron(ink, np.ones((4, 4), dtype=bool))
    return encode(Image.fromarray(np.uint8(np.where(big, 0, 255))).convert("1"))


def thick_pen(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A marker: strokes three to four times MNIST's width, with paper around them."""
    size = 140
    ink = _pen(_upscaled_ink(digit, size), int(rng.integers(6, 9)))
    return _dark_on_white(np.pad(ink, 30))


def thin_faint(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A hairline in faded ink on grey paper: a third of MNIST's stroke, a fifth of the contrast."""
    size = 200
    ink = _pen(_upscaled_ink(digit, size), -4)
    paper, pen = float(rng.integers(170, 200)), float(rng.integers(110, 135))
    page = np.pad(paper * (1 - ink) + pen * ink, 40, constant_values=paper)
    page += rng.normal(0, 2, size=page.shape)
    return encode(Image.fromarray(np.uint8(np.clip(page, 0, 255))))


def slanted(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A strongly slanted hand: the digit sheared by 20 to 35 degrees either way."""
    import cv2

    size = 140
    ink = np.pad(_upscaled_ink(digit, size), 60)
    shear = np.tan(np.deg2rad(rng.uniform(20, 35))) * rng.choice([-1, 1])
    height, width = ink.shape
    matrix = np.float32([[1, -shear, shear * height / 2], [0, 1, 0]])
    return _dark_on_white(cv2.warpAffine(ink, matrix, (width, height)))


def tight_crop(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """Cropped to the ink and stretched wider to a square, as some form readers store
    digits (a narrow 1 is only cropped: stretched, it would be a black rectangle)."""
    ink = _tight(_upscaled_ink(digit, 112))
    height, width = ink.shape
    stretched_width = width if width < 0.4 * height else max(width, height)
    stretched = np.asarray(Image.fromarray(np.uint8(255 * ink)).resize((stretched_width, height)),
                           dtype=np.float32) / 255
    return _dark_on_white(stretched)


PENS_AND_WRITERS: dict[str, Callable[[np.ndarray, np.random.Generator], bytes]] = {
    "heavy_ink": heavy_ink,
    "two_level": two_level,
    "thick_pen": thick_pen,
    "thin_faint": thin_faint,
    "slanted": slanted,
    "tight_crop": tight_crop,
}
"""What real handwriting does that MNIST doesn't: each a class of digits v1 misread or refused."""
