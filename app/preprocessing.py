"""Turning decoded pixels into the 28x28 MNIST-format digit the models were trained on.

Decoding (untrusted bytes -> pixels) is `app.decoding`, the security boundary; this module
starts from its output, a uint8 luminance image, and is pure numpy:

    per stack of same-sized images:
        to_light_on_dark -> find_digit_boxes -> fit_in_box -> center_by_mass

The steps work on a stack of images at once: a batch of requests' small uploads then costs
a few numpy calls in all, where one image at a time it cost a few dozen per image.

MNIST digits are light strokes on a black background, scaled so the longest side is 20 px
and placed in a 28x28 field so that their centre of mass is in the middle. Phone photos,
scans and canvas exports are none of that; each step below undoes one difference.
"""

from __future__ import annotations

import functools
import hashlib
import logging

import cv2
import numpy as np

from app.decoding import (
    DecodeLimits,
    DecoderFailure,
    ImageError,
    ImageHeader,
    decode,
    inspect,
)
from digit_contract import IMAGE_SIZE

logger = logging.getLogger("digits.preprocess")

DIGIT_BOX = 20
"""MNIST scales each digit so its longest side is 20 px."""

# Below this spread between background and ink there is no digit to read, only a blank page.
MIN_CONTRAST = 24.0

# Pixels at least this bright (after contrast stretching to 0..255) count as strokes.
STROKE_LEVEL = 64.0

# The bounding box ignores this fraction of stroke pixels at each end, so a speck of dust or a paper
# edge far from the digit does not shrink the digit to nothing.
CROP_TRIM = 0.002


def preprocess(data: bytes, limits: DecodeLimits = DecodeLimits()) -> np.ndarray:
    """Inspect, decode and normalise one encoded image, here: a uint8 [28, 28] digit."""
    [result] = prepare_images([data], limits)
    if isinstance(result, ImageError):
        raise result
    return result


def prepare_one(data: bytes, limits: DecodeLimits) -> np.ndarray | ImageError:
    """One encoded image as uint8 [28, 28], or the ImageError that rejected it."""
    return prepare_images([data], limits)[0]


# Decoded images waiting to be normalised are kept to about this many pixels: a batch of
# large images is normalised a few at a time instead of all held at once.
MAX_PENDING_PIXELS = 1 << 23


def prepare_images(blobs: list[bytes], limits: DecodeLimits,
                   headers: list[ImageHeader] | None = None) -> list[np.ndarray | ImageError]:
    """Each encoded image as uint8 [28, 28], or the ImageError that rejected it, decoded in
    this process (the callers decide which images may be: see app.preprocess_workers).
    `headers`, when given, are the images' own, already inspected against `limits`."""
    results: list[np.ndarray | ImageError | None] = [None] * len(blobs)
    pending: dict[int, np.ndarray] = {}
    pending_pixels = 0
    for i, data in enumerate(blobs):
        try:
            gray = decode(data, headers[i] if headers else inspect(data, limits))
        except ImageError as error:
            results[i] = error
            continue
        pending[i] = gray
        pending_pixels += gray.size
        if pending_pixels >= MAX_PENDING_PIXELS:
            results_of(pending, results)
            pending, pending_pixels = {}, 0
    results_of(pending, results)
    return results


def log_rejection(error: ImageError, data: bytes) -> None:
    """Note a decoder's unexpected failure with the payload's hash, to find and replay it."""
    if isinstance(error, DecoderFailure):
        logger.info("%s sha256 %s", error, hashlib.sha256(data).hexdigest())


def results_of(grays: dict[int, np.ndarray], results: list) -> None:
    """Normalise decoded images, stacked by size, into `results` at their indices."""
    for indices in _same_shape_groups(grays):
        try:
            digits, found = normalize(np.stack([grays[i] for i in indices]))
        except Exception:  # noqa: BLE001 - never let one image's failure take its stack
            for i in indices:
                results[i] = _normalize_alone(grays[i])
            continue
        next_digit = iter(digits)
        for i, has_digit in zip(indices, found, strict=True):
            results[i] = next(next_digit) if has_digit else ImageError(NO_DIGIT)


def _normalize_alone(gray: np.ndarray) -> np.ndarray | ImageError:
    try:
        digits, found = normalize(gray[np.newaxis])
    except Exception as error:  # noqa: BLE001
        logger.exception("normalising a %s image failed", gray.shape)
        return ImageError(f"The image could not be prepared ({type(error).__name__}).")
    return digits[0] if found[0] else ImageError(NO_DIGIT)


def normalize(grays: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Same-sized grayscale images [n, H, W] -> (their digits, uint8 [m, 28, 28], and which
    of the n held one, bool [n]; m of them did).

    Each digit is first brought to a working size (WORKING_BOX) where its pen is measured
    and, if a hairline, thickened; then it is fitted to MNIST's 20 px box.
    In a process that has called `use_compiled_kernels`, app.kernels does the same steps.
    """
    if _kernels is not None:
        return _kernels.normalize(grays)
    ink, found = to_light_on_dark(grays)
    ink = ink[found]
    working, _ = fit_in_box(ink, find_digit_boxes(ink), box=WORKING_BOX)
    working = normalize_strokes(working)
    fitted, sizes = fit_in_box(working, find_digit_boxes(working))
    return center_by_mass(fitted, sizes), found


_kernels = None


def use_compiled_kernels(enabled: bool = True) -> None:
    """Normalise with app.kernels in this process from now on (or, with False, with numpy
    again): the same digits, bit for bit, for less CPU. The server processes do; the
    decoder processes don't, since numba costs a process about 130 MB and 0.15 s to load,
    and decoders are replaced after every image that overruns its limits. If the loops
    cannot be loaded (a damaged cache, a full disk), the process keeps numpy."""
    global _kernels
    _kernels = None
    if not enabled:
        return
    try:
        from app import kernels

        kernels.warm_up()
    except Exception:  # noqa: BLE001 - a damaged cache or a full disk must not stop the service
        logger.exception("the compiled normalisation could not be loaded (numba's cache is "
                         "in NUMBA_CACHE_DIR or app/__pycache__); normalising with numpy")
        return
    _kernels = kernels


# Stacks are cut to at most this many pixels, so a batch of large photos never needs more
# than a few hundred MB of float temporaries at once.
MAX_STACK_PIXELS = 1 << 22


def _same_shape_groups(grays: dict[int, np.ndarray]) -> list[list[int]]:
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, gray in grays.items():
        by_shape.setdefault(gray.shape, []).append(i)
    groups = []
    for (height, width), indices in by_shape.items():
        step = max(1, MAX_STACK_PIXELS // (height * width))
        groups.extend(indices[start: start + step] for start in range(0, len(indices), step))
    return groups


NO_DIGIT = "No digit found: the image is blank or has almost no contrast."

# The levels taken as the darkest and lightest (see to_light_on_dark).
LOW_QUANTILE, HIGH_QUANTILE = 0.0002, 0.9998
# Noise is three standard deviations off the background, a deviation being 1.4826 median
# absolute deviations (a normal distribution's ratio).
NOISE_SCALE = 3.0 * 1.4826


def to_light_on_dark(grays: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Make each digit light on a black background and stretch its contrast to 0..255.

    Takes uint8 [n, H, W]; returns the ink, float32 [n, H, W], and which images have a
    digit at all (bool [n]; the others are blank or nearly so).

    The background is the paper's level: the median of the image's outer frame, or the
    whole image's median when the frame is the less even of the two (a page shaded from
    one edge to the other). A heavy digit cropped tight (a postal 0 or 8) can cover over
    half the image, so that the median is ink, and reach into the frame too; but it touches
    the frame at a few places only, and the frame's larger side is then the paper. Ink is
    whichever extreme lies further from the background, so dark ink on grey paper and
    white chalk on a blackboard both come out as MNIST does.
    """
    n = len(grays)
    # Each pixel's place in a per-image table of levels, [n, 256] flattened: for the
    # histograms, and at the end to look each pixel's ink up.
    in_table = grays.reshape(n, -1) + 256 * np.arange(n)[:, np.newaxis]
    image_counts = np.bincount(in_table.ravel(), minlength=256 * n).reshape(n, 256)
    edge_counts = _edge_histograms(grays)  # [n, 4, 256]
    frame_counts = edge_counts.sum(axis=1)
    # Near-extremes rather than min/max, so a few stray pixels can't decide; near enough
    # to the ends that a thin pen stroke on a big page (well under 1% of it) still counts.
    # (The image's and the frame's quantiles are found together; the frame's median is used.)
    cumulative = _cumulative(np.concatenate([image_counts, frame_counts]))
    quantiles = _quantiles(cumulative, LOW_QUANTILE, 0.5, HIGH_QUANTILE)
    low, median, high = quantiles[:n].T
    frame_level = quantiles[n:, 1]
    # A digit filling the image: the median is ink or its grey edges, and the paper is the
    # frame's larger side, split at the middle level: even, well away from the median, and
    # along all four edges (a page shaded from one edge to the other has each half of its
    # range along one side instead).
    paper_side = _paper_side(frame_counts, (low + high) / 2)
    paper_cumulative = _cumulative(np.where(paper_side, frame_counts, 0))
    paper_level = _quantiles(paper_cumulative, 0.5)[:, 0]
    spread, frame_spread, paper_spread = _median_deviations(
        np.concatenate([cumulative, paper_cumulative]),
        np.concatenate([median, frame_level, paper_level])).reshape(3, n)
    # A page: the paper is the calmer of the image and its frame (the frame unless the page
    # is shaded from edge to edge), and noise the smaller spread (a large digit's grey
    # edges inflate the image's, shading the frame's).
    background = np.where(frame_spread < spread, frame_level, median)
    deviation = np.minimum(spread, frame_spread)
    # Counts are whole numbers far below 2**53: the float64 product is exact, and several
    # times faster than numpy's sum over the levels.
    on_paper_side = (edge_counts.astype(np.float64) @ paper_side[:, :, np.newaxis])[..., 0]
    on_every_edge = (on_paper_side / edge_counts.sum(axis=2)).min(axis=1) > 0.25
    filled = ((np.abs(paper_level - median) > 0.25 * (high - low))
              & (paper_spread < 0.05 * (high - low)) & on_every_edge)
    background = np.where(filled, paper_level, background)
    deviation = np.where(filled, paper_spread, deviation)
    # Paper texture and sensor noise sit a few levels off the background; drop them.
    noise = NOISE_SCALE * deviation
    inverted = (background - low) > (high - background)
    # ink = (background - noise) - gray when inverted, else gray - (background + noise)
    sign = np.where(inverted, -1.0, 1.0)
    offset = np.where(inverted, background - noise, -(background + noise))
    # Worked out once per level rather than per pixel (a 28x28 image has three times as
    # many pixels as levels), in the same float32 steps, then looked up for each pixel.
    ink = np.tile(_LEVELS.astype(np.float32), (n, 1))
    ink *= _per_level(sign)
    ink += _per_level(offset)
    np.clip(ink, 0.0, None, out=ink)
    # The peak over the levels present: ink rises or falls with the level, so it is at the
    # darkest or the lightest of them (an image without pixels has none: no digit).
    present = image_counts > 0
    darkest, lightest = present.argmax(axis=1), 255 - present[:, ::-1].argmax(axis=1)
    rows = np.arange(n)
    peak = np.maximum(ink[rows, darkest], ink[rows, lightest])
    found = (peak >= MIN_CONTRAST) & present.any(axis=1)
    ink *= _per_level(255.0 / np.where(found, peak, 1.0))
    return ink.ravel()[in_table].reshape(grays.shape), found


def frame_edges(grays: np.ndarray) -> list[np.ndarray]:
    """The four bands along each image's edges (top, bottom, left, right), each 2% of the
    image's size deep (at least one pixel), [n, depth, length] or [n, length, depth]."""
    depth = frame_depth(grays.shape)
    if depth == 0:
        return [grays] * 4
    return [grays[:, :depth, :], grays[:, -depth:, :],
            grays[:, depth:-depth, :depth], grays[:, depth:-depth, -depth:]]


def frame_depth(shape: tuple[int, ...]) -> int:
    """How deep `frame_edges` cuts the frame of [n, H, W] images; 0: each edge is the
    whole image (too small to have a frame)."""
    height, width = shape[-2:]
    depth = max(1, round(0.02 * min(height, width)))
    return 0 if 2 * depth >= min(height, width) else depth


def _per_image(values: np.ndarray) -> np.ndarray:
    """One value per image, shaped to broadcast over a [n, H, W] stack as float32."""
    return np.asarray(values, dtype=np.float32)[:, np.newaxis, np.newaxis]


def _per_level(values: np.ndarray) -> np.ndarray:
    """One value per image, shaped to broadcast over [n, 256] tables as float32."""
    return np.asarray(values, dtype=np.float32)[:, np.newaxis]


_LEVELS = np.arange(256)


def _paper_side(frame_counts: np.ndarray, middle: np.ndarray) -> np.ndarray:
    """bool [n, 256]: the levels on the frame's larger side of `middle`, per image: the
    paper's, when a digit fills the image and reaches its frame."""
    dark = _LEVELS[np.newaxis, :] < middle[:, np.newaxis]
    dark_count = (frame_counts * dark).sum(axis=1)
    paper_is_dark = dark_count > frame_counts.sum(axis=1) - dark_count
    return dark == paper_is_dark[:, np.newaxis]


def _edge_histograms(grays: np.ndarray) -> np.ndarray:
    """int [n, 4, 256]: the level histogram of each of the four frame edges of each image."""
    n = len(grays)
    edges = [edge.reshape(n, -1) for edge in frame_edges(grays)]
    which_edge = np.repeat(np.arange(4), [edge.shape[1] for edge in edges])
    rows = which_edge[np.newaxis, :] + 4 * np.arange(n)[:, np.newaxis]
    offsets = np.concatenate(edges, axis=1) + 256 * rows
    return np.bincount(offsets.ravel(), minlength=1024 * n).reshape(n, 4, 256)


# Order statistics of uint8 images from their histograms: exact, and fast at any size.
# They work on cumulative counts (a cumulative sum is most of their cost: each is taken once).

def _cumulative(counts: np.ndarray) -> np.ndarray:
    """int [n, 257] from histograms [n, 256]: [:, k] is how many pixels lie below level k."""
    cumulative = np.zeros((len(counts), 257), np.int64)
    np.cumsum(counts, axis=1, out=cumulative[:, 1:])
    return cumulative


def _quantiles(cumulative: np.ndarray, *qs: float) -> np.ndarray:
    """[n, len(qs)] levels: the lowest level whose cumulative count reaches q of all."""
    targets = np.multiply.outer(cumulative[:, -1], qs)  # [n, q]
    return _count_below(cumulative[:, 1:], targets)


def _median_deviations(cumulative: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """[n] median absolute deviation of each image's levels from its (integer) center:
    the smallest d whose window of levels [c - d, c + d] holds half of the pixels.

    A window's count is a difference of two cumulative counts, and it grows with d: it is
    taken at the last d of each block of 16 to find the block, then at each d in that block.
    (A histogram of deviations for every d cost more than the rest of the polarity step.)
    """
    flat = cumulative.ravel()
    half = 0.5 * cumulative[:, -1:]
    rows = 257 * np.arange(len(cumulative))[:, np.newaxis]
    centers = np.asarray(centers, dtype=np.int64)[:, np.newaxis]

    def short_of_half(deviations: np.ndarray) -> np.ndarray:
        above = flat[rows + np.minimum(centers + deviations, 255) + 1]
        below = flat[rows + np.maximum(centers - deviations, 0)]
        return above - below < half

    block = short_of_half(_BLOCK_ENDS).sum(axis=1, keepdims=True)  # d = 255 holds them all
    return 16 * block[:, 0] + short_of_half(16 * block + _IN_BLOCK).sum(axis=1)


_IN_BLOCK = np.arange(16)
_BLOCK_ENDS = 16 * _IN_BLOCK + 15


# Up to this many (row, target) pairs, _count_below compares each target with its whole row.
_COMPARED_ROWS = 24


def _count_below(cumulative: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Row-wise `searchsorted(cumulative[i], targets[i])`: [n, L] and [n, q] -> [n, q], for
    non-negative counts and targets.

    One searchsorted over all rows at once: each row is lifted above the one before it by
    more than any count or target, so the rows laid end to end stay sorted and a target,
    lifted with its row, lands within it.
    """
    n, length = cumulative.shape
    if n * targets.shape[1] <= _COMPARED_ROWS:  # a few rows: comparing all is cheaper
        return (cumulative[:, np.newaxis, :] < targets[:, :, np.newaxis]).sum(axis=2)
    # A whole count is below t exactly when it is below ceil(t): all in integers, no copy.
    targets = np.ceil(targets).astype(np.int64)
    lift = max(int(cumulative[:, -1].max(initial=0)), int(targets.max(initial=0))) + 1
    rows = lift * np.arange(n)[:, np.newaxis]
    found = np.searchsorted((cumulative + rows).ravel(), targets + rows)
    return found - length * np.arange(n)[:, np.newaxis]


def find_digit_boxes(ink: np.ndarray) -> np.ndarray:
    """Each digit's bounding box, int [n, 4]: top, bottom, left, right (inclusive).

    The box is found from clearly inked pixels (a quarter of full strength or more), so
    faint noise spread over a whole page can't widen it.
    """
    # Counted by matrix products with ones: several times faster than numpy's sums over an
    # axis of small images, and exact (whole numbers far below float32's 2**24).
    strokes = (ink >= STROKE_LEVEL).astype(np.float32)
    _, height, width = ink.shape
    top, bottom = _trimmed_spans((strokes @ np.ones(width, np.float32)).astype(np.int64))
    left, right = _trimmed_spans((np.ones(height, np.float32) @ strokes).astype(np.int64))
    return np.stack([top, bottom, left, right], axis=1)


def _trimmed_spans(profiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last index of each row holding strokes, ignoring CROP_TRIM of them at each end."""
    cumulative = np.cumsum(profiles, axis=1)
    total = cumulative[:, -1:]
    first = (cumulative <= total * CROP_TRIM).sum(axis=1)
    last = (cumulative < total * (1.0 - CROP_TRIM)).sum(axis=1)
    return first, np.maximum(first, np.minimum(last, profiles.shape[1] - 1))


def fitted_sizes(boxes: np.ndarray, box: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The boxes' heights and widths, and each digit's size once its longest side is
    `box` px (int [n, 2]: height, width)."""
    top, bottom, left, right = boxes.T
    heights, widths = bottom - top + 1, right - left + 1
    scale = box / np.maximum(heights, widths)
    sizes = np.stack([np.maximum(1, np.round(heights * scale)),
                      np.maximum(1, np.round(widths * scale))], axis=1).astype(np.int64)
    return heights, widths, sizes


def fit_in_box(ink: np.ndarray, boxes: np.ndarray,
               box: int = DIGIT_BOX) -> tuple[np.ndarray, np.ndarray]:
    """Cut each digit out and scale it so its longest side is `box` px, keeping the aspect
    ratio, with its peak back at 255.

    Returns float32 [n, box, box] with each digit in the top-left corner and zeros beside
    it, and each digit's size, int [n, 2]: height, width.

    The scaling is Pillow's Lanczos, written as two matrix products per image (rows, then
    columns) so that one batched product scales the whole stack.
    """
    n, height, width = ink.shape
    top, _, left, _ = boxes.T
    heights, widths, sizes = fitted_sizes(boxes, box)
    rows = resampling_matrices(top, heights, sizes[:, 0], box, height)
    cols = resampling_matrices(left, widths, sizes[:, 1], box, width)
    fitted = rows @ ink @ cols.transpose(0, 2, 1)
    np.clip(fitted, 0.0, 255.0, out=fitted)
    peak = fitted.max(axis=(1, 2))
    fitted *= _per_image(255.0 / np.where(peak > 0, peak, 1.0))
    return fitted, sizes


def resampling_matrices(starts: np.ndarray, lengths: np.ndarray, out_lengths: np.ndarray,
                        box: int, extent: int) -> np.ndarray:
    """float32 [n, box, extent]: matrix i resamples the lengths[i] pixels from starts[i] to
    out_lengths[i] pixels (its first rows; Lanczos weights), with zeros elsewhere."""
    matrices = np.zeros((len(starts), box, extent), dtype=np.float32)
    spans = zip(starts.tolist(), lengths.tolist(), out_lengths.tolist(), strict=True)
    for i, (start, length, out) in enumerate(spans):
        matrices[i, :out, start: start + length] = lanczos_weights(length, out)
    return matrices


WORKING_BOX = 40
"""Digits are measured and re-stroked at twice MNIST's box: fine enough for one-pixel steps."""

# MNIST's median stroke width at WORKING_BOX, in pixels (as `stroke_width` measures it, over
# the held-out digits: `python -m bench.accuracy --strokes` prints the distribution).
MNIST_STROKE = 4.5
# A pen under this width is thickened to MNIST_STROKE (MNIST's own 5th percentile is 3.0).
# Thick pens are left alone: the models learn them in training (random dilation), and
# thinning them eroded the loops of heavy digits shut and the thin parts of mixed ones away
# (`python -m bench.accuracy --sets heavy_ink,thick_pen`: 92-94% with thinning, 98-99% without).
THIN_STROKE = 0.5 * MNIST_STROKE
# Strokes are cut at half strength when measured.
STROKE_MASK_LEVEL = 128.0


def stroke_width(digit: np.ndarray) -> float:
    """The typical stroke width of one float32 digit, in pixels (see `stroke_widths`)."""
    return float(stroke_widths(digit[np.newaxis])[0])


# Ridge distances are counted in quarter pixels.
DISTANCE_STEPS = 4


def stroke_widths(digits: np.ndarray) -> np.ndarray:
    """The typical stroke width of each float32 digit [n, H, W], in pixels: float [n].

    Along the middle of a stroke w pixels wide (its ridge: the pixels farthest from the
    background locally) the distance to the background is about (w + 1) / 2. Its upper
    quartile over the ridge is the pen's width: above the stroke ends' and corners' smaller
    values, and below a filled loop's or an ink blot's, which add a few ridge pixels but
    many inked ones, so they don't make a digit's pen look thicker than it is.
    The distance transform is OpenCV's, image by image; the rest is done on the stack.
    """
    if len(digits) == 0:
        return np.zeros(0)
    masks, distances = stroke_distances(digits)
    n, height, width = masks.shape
    # The stacked images' blank borders keep them apart here too: the dilation reaches one
    # pixel only.
    neighbourhood = cv2.dilate(distances.reshape(n * height, width),
                               _disc(1)).reshape(masks.shape)
    ridge = np.flatnonzero((distances >= neighbourhood) & (masks > 0))
    image = ridge // (height * width)
    steps = np.minimum(np.round(distances.ravel()[ridge] * DISTANCE_STEPS), 255).astype(np.int64)
    counts = np.bincount(image * 256 + steps, minlength=256 * n).reshape(n, 256)
    cumulative = np.cumsum(counts, axis=1)
    upper_quartile = _count_below(cumulative, 0.75 * cumulative[:, -1:])[:, 0]
    widths = 2.0 * upper_quartile / DISTANCE_STEPS - 1.0
    return np.where(cumulative[:, -1] > 0, widths, MNIST_STROKE)


def stroke_distances(digits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each digit's strokes (uint8 masks [n, H + 2, W + 2], with a blank border) and their
    distance to the background (float32, the same shape)."""
    masks = _pad(digits >= STROKE_MASK_LEVEL, 1, np.uint8)
    # The padded masks, one above the other, make a single image for OpenCV: each digit's
    # blank border keeps the digits apart, since a border pixel is nearer to every pixel
    # inside than anything beyond it.
    n, height, width = masks.shape
    distances = cv2.distanceTransform(masks.reshape(n * height, width), cv2.DIST_L2,
                                      cv2.DIST_MASK_5)
    return masks, distances.reshape(masks.shape)


def normalize_strokes(digits: np.ndarray) -> np.ndarray:
    """Thicken each hairline digit's pen to MNIST's. Takes and returns float32
    [n, WORKING_BOX, WORKING_BOX] (with a margin added for the dilation)."""
    return thicken_thin_pens(digits, stroke_widths(digits))


def thicken_thin_pens(digits: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """`normalize_strokes` given the digits' stroke widths."""
    margin = 4
    padded = _pad(digits, margin)
    # Dilation reaches at most 2 px, within the margin: a stroke is at least 1 px wide.
    radii = np.round((MNIST_STROKE - widths) / 2).astype(int)
    thin = widths < THIN_STROKE
    for radius in sorted(set(radii[thin].tolist())):
        _apply_stacked(cv2.dilate, padded, np.flatnonzero(thin & (radii == radius)), _disc(radius))
    return padded


def _apply_stacked(operation, images: np.ndarray, which: np.ndarray,
                   element: np.ndarray) -> None:
    """images[which] = operation(each of them, element), as one OpenCV call on the images
    stacked one above the other. Their zero margins keep them apart: a dilation stays
    within the margin."""
    chosen = images[which]
    stacked = chosen.reshape(-1, chosen.shape[-1])
    images[which] = operation(stacked, element).reshape(chosen.shape)


def _pad(images: np.ndarray, margin: int, dtype=None) -> np.ndarray:
    """[n, H, W] -> [n, H + 2 margin, W + 2 margin] with zeros around (np.pad is slower)."""
    n, height, width = images.shape
    padded = np.zeros((n, height + 2 * margin, width + 2 * margin), dtype or images.dtype)
    padded[:, margin: margin + height, margin: margin + width] = images
    return padded


@functools.lru_cache(maxsize=16)
def _disc(radius: int) -> np.ndarray:
    size = 2 * max(radius, 0) + 1
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


# The cache is keyed on digit sizes (at most WORKING_SIZE x DIGIT_BOX of them), which a
# client controls: 256 entries of at most 80 KB each bound it to 20 MB.
@functools.lru_cache(maxsize=256)
def lanczos_weights(length: int, out_length: int) -> np.ndarray:
    """float32 [out_length, length]: resampling `length` pixels to `out_length` pixels.

    Pillow's resampling (Resample.c): output pixel j is centred at (j + 0.5) * step in the
    input, and takes a Lanczos-3 kernel, widened by the step when shrinking, over the
    window Pillow uses, normalised to sum to one. Cached: digits come in a few sizes.
    """
    step = length / out_length
    widen = max(step, 1.0)
    support = 3.0 * widen
    centers = (np.arange(out_length)[:, np.newaxis] + 0.5) * step
    positions = np.arange(length)[np.newaxis, :]
    first = np.maximum(np.trunc(centers - support + 0.5), 0)
    stop = np.minimum(np.trunc(centers + support + 0.5), length)
    x = (positions - centers + 0.5) / widen
    used = (positions >= first) & (positions < stop) & (np.abs(x) < 3.0)
    weights = np.where(used, np.sinc(x) * np.sinc(x / 3.0), 0.0)
    weights /= weights.sum(axis=1, keepdims=True)
    weights = weights.astype(np.float32)
    weights.flags.writeable = False  # shared by every caller
    return weights


def center_by_mass(fitted: np.ndarray, sizes: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Place each digit in a size x size field with its centre of mass in the middle.

    Takes `fit_in_box`'s output; returns uint8 [n, size, size].
    """
    tops, lefts = mass_offsets(fitted, sizes, size)
    n, box, _ = fitted.shape
    # Each digit goes in with the zeros beside it, into a field wide enough for any shift.
    field = np.zeros((n, size + box, size + box), dtype=np.float32)
    for i, (top, left) in enumerate(zip(tops.tolist(), lefts.tolist(), strict=True)):
        field[i, top: top + box, left: left + box] = fitted[i]
    return np.round(field[:, :size, :size]).astype(np.uint8)


def mass_offsets(fitted: np.ndarray, sizes: np.ndarray,
                 size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Where each fitted digit's top-left corner goes in the size x size field: int [n]
    rows and columns."""
    box = fitted.shape[1]
    positions = np.arange(box)
    # Plain sums, not products with ones: a symmetric digit's centre can sit exactly on a
    # half pixel, and a product's different order of additions tips its rounding the
    # other way (found by an attack on the faster version: some answers changed).
    row_mass, col_mass = fitted.sum(axis=2), fitted.sum(axis=1)
    total = row_mass.sum(axis=1)
    has_mass = total > 0
    safe_total = np.where(has_mass, total, 1.0)
    center_row = np.where(has_mass, row_mass @ positions / safe_total, (sizes[:, 0] - 1) / 2)
    center_col = np.where(has_mass, col_mass @ positions / safe_total, (sizes[:, 1] - 1) / 2)
    # MNIST's centres of mass sit at (14.0, 14.0) in pixel indices (measured on the training
    # digits), half a pixel right of and below the geometric centre.
    middle = size / 2
    tops = np.clip(np.round(middle - center_row), 0, size - sizes[:, 0]).astype(np.int64)
    lefts = np.clip(np.round(middle - center_col), 0, size - sizes[:, 1]).astype(np.int64)
    return tops, lefts
