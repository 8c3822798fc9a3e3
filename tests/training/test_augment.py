"""The training-only augmentation: pens, two-level scans, continental 1s, stretched digits."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from training.augment import (
    make_augment,
    random_stroke_width,
    random_two_level,
    with_flagged_ones,
    with_stretched_digits,
)
from training.config import TrainingConfig


def bar(width: int) -> np.ndarray:
    """A vertical stroke `width` px wide, as a batch of one float image."""
    image = np.zeros((1, 28, 28, 1), np.float32)
    image[0, 4:24, 14 - width // 2: 14 - width // 2 + width] = 1.0
    return image


def test_stroke_width_thins_keeps_or_thickens_each_image():
    images = tf.constant(np.repeat(bar(3), 400, axis=0))
    widths = (random_stroke_width(images).numpy()[:, 14] > 0.5).sum(axis=(1, 2))
    # eroded by 1 px a side, kept, dilated by 1 or by 2: 1, 3, 5 or 7 px wide
    assert set(widths.tolist()) == {1, 3, 5, 7}


def test_two_level_thresholds_only_the_share_asked_for():
    images = tf.constant(np.full((1000, 28, 28, 1), 0.5, np.float32))
    out = random_two_level(images, rate=0.3).numpy()
    changed = (out[:, 0, 0, 0] != 0.5).mean()
    assert 0.22 < changed < 0.38
    assert set(np.unique(out[out != 0.5]).tolist()) <= {0.0, 1.0}


def test_the_augmented_batch_keeps_shape_and_range():
    out = make_augment(TrainingConfig())(tf.constant(np.repeat(bar(3), 64, axis=0))).numpy()
    assert out.shape == (64, 28, 28, 1)
    assert out.min() >= 0.0 and out.max() <= 1.0 + 1e-6


def test_flagged_ones_are_added_as_ones_and_wider_than_the_originals():
    rng = np.random.default_rng(0)
    images = np.repeat((bar(2)[..., 0] * 255).astype(np.uint8), 10, axis=0)
    images = np.concatenate([images, np.zeros((5, 28, 28), np.uint8)])
    labels = np.array([1] * 10 + [0] * 5, np.uint8)
    more, more_labels = with_flagged_ones(images, labels, rng, share=0.5)
    assert len(more) == 20 and (more_labels[15:] == 1).all()
    assert (more[:15] == images).all()  # the originals are untouched
    width = lambda image: np.ptp(np.nonzero(image > 128)[1])  # noqa: E731
    assert all(width(flagged) > width(images[0]) + 2 for flagged in more[15:])


def test_narrow_digits_get_widened_copies_fitted_back_into_mnists_box():
    rng = np.random.default_rng(0)
    narrow = np.repeat((bar(3)[..., 0] * 255).astype(np.uint8), 10, axis=0)  # 3 x 20 px
    square = np.zeros((10, 28, 28), np.uint8)
    square[:, 4:24, 4:24] = 255
    images = np.concatenate([narrow, square])
    labels = np.array([1] * 10 + [0] * 10, np.uint8)
    more, more_labels = with_stretched_digits(images, labels, rng, share=0.5)
    assert len(more) == 25 and (more_labels[20:] == 1).all()  # only narrow ones are widened
    assert (more[:20] == images).all()
    for widened in more[20:]:
        rows, cols = np.nonzero(widened > 128)
        height, width = np.ptp(rows) + 1, np.ptp(cols) + 1
        assert 19 <= height <= 21 and 1.3 * 3 <= width <= 0.85 * 20 + 1
        centre = np.average(np.indices(widened.shape).reshape(2, -1), axis=1,
                            weights=widened.ravel().astype(float))
        assert np.abs(centre - 14).max() <= 1.0


def test_sets_with_no_one_or_no_narrow_digit_are_returned_as_they_are():
    rng = np.random.default_rng(0)
    wide = np.zeros((4, 28, 28), np.uint8)
    wide[:, 10:14, 4:24] = 255
    wide[0] = 0  # and a blank one
    labels = np.array([0, 2, 3, 5], np.uint8)
    for add in (with_flagged_ones, with_stretched_digits):
        more, more_labels = add(wide, labels, rng, 1.0)
        assert (more == wide).all() and (more_labels == labels).all()
