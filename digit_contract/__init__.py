"""The contract between `training` and `app`: what a served model looks like.

Both packages import this module and nothing of each other. It holds the input format the
models expect, the pixel scaling (one definition used in training and in serving), the closed
set of architecture styles, and the TensorFlow Serving directory layout.
"""

from __future__ import annotations

import enum
from pathlib import Path

import numpy as np

IMAGE_SIZE = 28
"""Models take IMAGE_SIZE x IMAGE_SIZE single-channel images."""

NUM_CLASSES = 10
INPUT_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 1)
SIGNATURE_NAME = "serving_default"
METADATA_FILE = "metadata.json"
SUMMARY_TEXT_FILE = "summary.txt"
HISTORY_PLOT_FILE = "training.png"
LITERT_FILE = "model.tflite"
"""The same model as a LiteRT (TensorFlow Lite) flatbuffer, converted from the SavedModel at
export: what a CPU server runs, without importing TensorFlow."""
PIXEL_CONVENTION = "light digit on dark background (MNIST), float32 in [0, 1] = uint8 / 255"


class Style(enum.StrEnum):
    """The three ways the Keras material builds a model."""

    sequential = "sequential"
    functional = "functional"
    subclassed = "subclassed"


def scale_pixels(pixels: np.ndarray) -> np.ndarray:
    """Map uint8 grey levels (0..255) to the float32 [0, 1] range the models were trained on."""
    return np.asarray(pixels, dtype=np.float32) / np.float32(255.0)


def list_versions(style_dir: Path) -> list[int]:
    """Integer version directories under `style_dir`, ascending; anything else is ignored.

    Temporary directories of an export in progress start with a dot, so they never count.
    """
    if not style_dir.is_dir():
        return []
    return sorted(
        int(entry.name)
        for entry in style_dir.iterdir()
        # Written as the number is ('03' would be loaded from '3'): ASCII digits ('²' is a
        # digit to str.isdigit, not to int), no leading zero, and not too many.
        if entry.is_dir() and entry.name.isascii() and entry.name.isdigit()
        and len(entry.name) <= 18 and str(int(entry.name)) == entry.name
    )
