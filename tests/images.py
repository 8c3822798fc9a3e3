"""Small images the tests draw themselves."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from scripts.realworld_images import encode

__all__ = ["draw_one", "encode", "seven"]


def draw_one(size=(200, 300), box=(90, 40, 110, 260), ink=0, paper=255, mode="L") -> Image.Image:
    """A vertical bar (a '1') drawn as a rectangle on a plain page."""
    image = Image.new(mode, size, paper)
    ImageDraw.Draw(image).rectangle(box, fill=ink)
    return image


def seven() -> np.ndarray:
    """A light-on-dark 28x28 '7', the shape of an MNIST digit."""
    image = Image.new("L", (28, 28), 0)
    draw = ImageDraw.Draw(image)
    draw.line((7, 7, 20, 7), fill=255, width=3)
    draw.line((20, 7, 11, 22), fill=255, width=3)
    return np.asarray(image)
