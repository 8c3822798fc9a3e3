"""Training-only augmentation: the pens, writers and scanners that MNIST lacks.

MNIST's digits share one pen (strokes about 2.5 px wide at 28x28), gentle slants and
anti-aliased grey edges. Real uploads come from felt pens and hairline pens, thresholded
scans (two levels only), stretched boxes and strongly slanted hands. Each training batch is
varied along those axes, per image, so the models learn the digit rather than the pen:

    geometry (rotation, shear, zoom with its own width factor, shift)
    -> stroke width (erode one pixel, keep, dilate one or two)
    -> two levels (some digits thresholded)

for a share of the images (`variety`); the others get only light shifts, rotations and
zooms, so that MNIST-like digits stay the models' home ground.

All of it runs inside the tf.data pipeline on whole batches; nothing is applied at serving.
"""

from __future__ import annotations

import cv2
import keras
import numpy as np
import tensorflow as tf

from training.config import TrainingConfig


def make_geometry(config: TrainingConfig, variety: bool = True) -> keras.Sequential:
    """Random rotation, zoom and shift; with `variety`, shear and a zoom of the width of its
    own (aspect change) too."""
    fill = {"fill_mode": "constant", "fill_value": 0.0}
    layers = [keras.layers.RandomRotation(config.rotation, **fill)]
    if variety and config.shear > 0:
        layers.append(keras.layers.RandomShear(x_factor=config.shear, **fill))
    width_factor = (-config.aspect, config.aspect) if variety else None
    layers += [
        keras.layers.RandomZoom(height_factor=(-config.zoom, config.zoom),
                                width_factor=width_factor, **fill),
        keras.layers.RandomTranslation(config.shift, config.shift, **fill),
    ]
    return keras.Sequential(layers, name="augmenter" if variety else "light_augmenter")


# Stroke-width choices and how often each is drawn: erode by one pixel (a hairline pen),
# keep, dilate by one pixel (about 2x MNIST's width) or by two (about 3x).
STROKE_CHANGES = (-1, 0, 1, 2)
STROKE_ODDS = (0.05, 0.6, 0.25, 0.1)


def random_stroke_width(images: tf.Tensor, odds=STROKE_ODDS) -> tf.Tensor:
    """Per image, thin or thicken the strokes: grey-level erosion and dilation as max-pools."""
    def dilate(x, radius):
        return tf.nn.max_pool2d(x, 2 * radius + 1, 1, "SAME")

    variants = tf.stack([-dilate(-images, 1), images, dilate(images, 1), dilate(images, 2)])
    batch = tf.shape(images)[0]
    logits = tf.math.log(tf.constant([odds], dtype=tf.float32))
    choice = tf.random.categorical(logits, batch)[0]  # [batch] index into the variants
    return tf.gather_nd(variants, tf.stack([tf.cast(choice, tf.int32), tf.range(batch)], 1))


def random_two_level(images: tf.Tensor, rate: float) -> tf.Tensor:
    """Threshold a `rate` of the images at a random level, as a two-level scan would."""
    batch = tf.shape(images)[0]
    level = tf.random.uniform([batch, 1, 1, 1], 0.25, 0.65)
    thresholded = tf.cast(images > level, images.dtype)
    chosen = tf.random.uniform([batch, 1, 1, 1]) < rate
    return tf.where(chosen, thresholded, images)


def make_augment(config: TrainingConfig):
    """The batch augmentation function for `Dataset.map`: images [b, 28, 28, 1] in [0, 1]."""
    geometry, light = make_geometry(config), make_geometry(config, variety=False)

    def augment(images: tf.Tensor) -> tf.Tensor:
        varied = geometry(images, training=True)
        if config.stroke_width:
            varied = random_stroke_width(varied)
        if config.two_level > 0:
            varied = random_two_level(varied, config.two_level)
        # The rest keep MNIST's own look (version 1's light augmentation), so the models
        # lose nothing on MNIST-like digits while they learn the others.
        chosen = tf.random.uniform([tf.shape(images)[0], 1, 1, 1]) < config.variety
        return tf.where(chosen, varied, light(images, training=True))

    return augment


def with_flagged_ones(images, labels, rng, share: float = 1.0):
    """The training digits plus, for a `share` of the 1s, a copy written the continental way:
    a flag from the top running down to the left, and for some a base bar.

    MNIST's 1s (American writers) are nearly all bare strokes, so a model trained on them
    reads a flagged 1 as a 4 or a 7 and a based one as a 2. Taught on both, it reads all.
    Returns new arrays: uint8 images [n + m, 28, 28] and labels [n + m].
    """
    ones = np.flatnonzero(labels == 1)
    chosen = rng.choice(ones, size=int(share * len(ones)), replace=False)
    if len(chosen) == 0:
        return images, labels
    extra = np.stack([_flag_one(images[i], rng) for i in chosen])
    return (np.concatenate([images, extra]),
            np.concatenate([labels, np.full(len(extra), 1, labels.dtype)]))


def with_stretched_digits(images, labels, rng, share: float):
    """The training digits plus, for a `share` of the narrow ones (1s, and many 7s and 9s),
    a copy widened towards a square, as a form that stretches each digit to fill its box
    makes them: a 1 becomes a thick bar, since its stroke widens with it.

    Served digits are fitted by their longest side, so such a bar arrives as wide as
    MNIST's 0s; MNIST has none, and a model trained on it reads the bar as a 3 or an 8.
    Returns new arrays: uint8 images [n + m, 28, 28] and labels [n + m].
    """
    aspects = np.array([_aspect(image) for image in images])
    narrow = np.flatnonzero(aspects < NARROW)
    chosen = rng.choice(narrow, size=int(share * len(narrow)), replace=False)
    if len(chosen) == 0:
        return images, labels
    extra = np.stack([_widen(images[i], rng.uniform(1.3 * aspects[i], WIDEST)) for i in chosen])
    return (np.concatenate([images, extra]), np.concatenate([labels, labels[chosen]]))


# Digits narrower than this (width / height) are widened, by a third at least and to at
# most WIDEST.
NARROW = 0.65
WIDEST = 0.85


def _aspect(digit: np.ndarray) -> float:
    rows, cols = np.nonzero(digit > 32)
    if len(rows) == 0:  # a blank image is not narrow
        return 1.0
    return (cols.max() - cols.min() + 1) / (rows.max() - rows.min() + 1)


def _widen(digit: np.ndarray, aspect: float) -> np.ndarray:
    """The digit stretched sideways to width = aspect x height, fitted back into MNIST's
    20 px box and centred by mass."""
    rows, cols = np.nonzero(digit > 32)
    crop = digit[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1].astype(np.float32)
    height = crop.shape[0]
    wide = cv2.resize(crop, (max(1, round(aspect * height)), height),
                      interpolation=cv2.INTER_LINEAR)
    scale = 20 / max(wide.shape)
    fitted = cv2.resize(wide, (max(1, round(wide.shape[1] * scale)),
                               max(1, round(wide.shape[0] * scale))),
                        interpolation=cv2.INTER_AREA)
    return _centred_by_mass(fitted)


def _centred_by_mass(digit: np.ndarray) -> np.ndarray:
    """A float digit (at most 28 x 28) placed in MNIST's frame: centre of mass in the middle."""
    total = digit.sum()
    ys, xs = np.indices(digit.shape)
    shift = np.float32([[1, 0, 14 - (xs * digit).sum() / total],
                        [0, 1, 14 - (ys * digit).sum() / total]])
    return np.uint8(np.clip(cv2.warpAffine(digit, shift, (28, 28)), 0, 255))


def _flag_one(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One MNIST 1 with a flag (always) and a base (a third of the time), re-centred by mass.

    Continental writers hold the 1 upright and pull the flag well out to the left, about as
    heavy as the stem; MNIST's 1s mostly lean right. So half the copies are first sheared
    upright, and flags run 30-60 degrees from the stem, a third to half its height long.
    """
    scale = 4  # draw at 4x for smooth anti-aliased strokes, then shrink back
    big = cv2.resize(digit, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    if rng.random() < 0.5:
        big = _upright(big)
    top, bottom, top_x, bottom_x = _stem(big)
    height = bottom - top
    stem_width = np.sqrt((big > 128).sum() / max(height, 1))
    thickness = max(scale, int(stem_width * rng.uniform(0.9, 1.5)))
    angle = np.deg2rad(rng.uniform(30, 60))  # from the vertical
    length = rng.uniform(0.3, 0.5) * height
    end = (int(top_x - length * np.sin(angle)), int(top + length * np.cos(angle)))
    cv2.line(big, (int(top_x), int(top)), end, 255, thickness, cv2.LINE_AA)
    if rng.random() < 1 / 3:
        half = int(rng.uniform(0.15, 0.3) * height)
        cv2.line(big, (int(bottom_x) - half, int(bottom)), (int(bottom_x) + half, int(bottom)),
                 255, thickness, cv2.LINE_AA)
    return _centred_by_mass(cv2.resize(big, (28, 28), interpolation=cv2.INTER_AREA)
                            .astype(np.float32))


def _stem(big: np.ndarray) -> tuple[int, int, float, float]:
    """A 1's top and bottom rows, and the mean column of the ink at each end."""
    rows, cols = np.nonzero(big > 128)
    top, bottom = int(rows.min()), int(rows.max())
    height = max(bottom - top, 1)
    return (top, bottom, float(cols[rows < top + 0.08 * height].mean()),
            float(cols[rows > bottom - 0.08 * height].mean()))


def _upright(big: np.ndarray) -> np.ndarray:
    """The 1 sheared so that the top of its stem is straight above the bottom."""
    top, bottom, top_x, bottom_x = _stem(big)
    lean = (top_x - bottom_x) / max(bottom - top, 1)
    shear = np.float32([[1, lean, -lean * (top + bottom) / 2], [0, 1, 0]])
    return cv2.warpAffine(big, shear, big.shape[::-1], flags=cv2.INTER_LINEAR)
