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
