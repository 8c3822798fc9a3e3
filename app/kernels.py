"""Compiled loops for `app.preprocessing`: the same digits, bit for bit, for less CPU.

The numpy steps of `app.preprocessing` work on stacks of images, yet each still makes a
few dozen numpy calls per stack, and every call has a fixed cost of a microsecond or two
that small stacks cannot hide (`python -m bench.preprocess`: a lone digit 303 µs with
numpy, 82 µs here; in batches of 16, 53 and 30).
Here the same steps are loops, compiled once by numba, over each image's pixels and its
256 levels. They repeat numpy's arithmetic exactly (the same float32 and float64
operations in the same order), so that a digit does not depend on which path prepared
it: `tests/app/test_kernels.py` compares the two on generated images, and
`python -m bench.preprocess --digests` on every benchmark set.

What numpy or OpenCV already does in one call stays with them: the resampling matrix
products (their rounding is OpenBLAS's), the distance transform and the dilation of thin
pens.

Compiled code is cached on disk (numba's cache: `__pycache__` beside this file, or
`NUMBA_CACHE_DIR`), so only the first process on a machine compiles; where no cache
directory is writable each process compiles for itself, a few seconds. A process that
cannot load them at all keeps numpy (`app.preprocessing.use_compiled_kernels`).
"""

from __future__ import annotations

import threading

import numba
import numpy as np

from app import preprocessing as steps


def normalize(grays: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`app.preprocessing.normalize`, with the loops below."""
    # The loops are compiled for writable C-ordered arrays (warm_up); anything else would
    # compile another version while a request waits.
    grays = np.require(grays, np.uint8, ["C_CONTIGUOUS", "WRITEABLE"])
    ink, found = light_on_dark(grays, steps.frame_depth(grays.shape), steps.NOISE_SCALE,
                               steps.LOW_QUANTILE, steps.HIGH_QUANTILE, steps.MIN_CONTRAST)
    if not found.any():
        return np.zeros((0, steps.IMAGE_SIZE, steps.IMAGE_SIZE), np.uint8), found
    working, _ = fit_in_box(ink[found], steps.WORKING_BOX)
    _, distances = steps.stroke_distances(working)
    widths = ridge_widths(distances, steps.DISTANCE_STEPS, steps.MNIST_STROKE)
    fitted, sizes = fit_in_box(steps.thicken_thin_pens(working, widths), steps.DIGIT_BOX)
    tops, lefts = steps.mass_offsets(fitted, sizes)
    return place_and_round(fitted, tops, lefts, steps.IMAGE_SIZE), found


def fit_in_box(ink: np.ndarray, box: int) -> tuple[np.ndarray, np.ndarray]:
    """`app.preprocessing.fit_in_box` of each digit's box (`find_digit_boxes`)."""
    boxes, sizes = boxes_and_sizes(ink, box, steps.STROKE_LEVEL, steps.CROP_TRIM)
    _, height, width = ink.shape
    rows = _resampling(boxes[:, 0], boxes[:, 1], sizes[:, 0], box, height)
    cols = _resampling(boxes[:, 2], boxes[:, 3], sizes[:, 1], box, width)
    fitted = rows @ ink @ cols.transpose(0, 2, 1)
    to_full_scale(fitted)
    return fitted, sizes


class _Weights(threading.local):
    """The Lanczos matrices this thread has used, laid end to end in `flat` (a fixed
    capacity: adding one copies only it), and where each starts: offsets[length,
    out_length], -1 until it is added. Per thread, since the batch threads and the event
    loop normalise at once."""

    MAX_LENGTH = 1024
    CAPACITY = 1 << 20  # floats, 4 MB; a full store starts afresh

    def __init__(self):
        self.offsets = np.full((self.MAX_LENGTH + 1, steps.WORKING_BOX + 1), -1, np.int64)
        self.flat = np.zeros(self.CAPACITY, np.float32)
        self.used = 0

    def clear(self) -> None:
        self.offsets.fill(-1)
        self.used = 0

    def add(self, lengths: np.ndarray, out_lengths: np.ndarray) -> bool:
        """Store the weights of every (length, out_length) pair not stored yet, starting
        afresh if they don't fit; False if the pairs need more than the whole store."""
        pairs = set(zip(lengths.tolist(), out_lengths.tolist(), strict=True))
        missing = [pair for pair in pairs if self.offsets[pair] < 0]
        if self.used + sum(length * out for length, out in missing) > self.CAPACITY:
            if sum(length * out for length, out in pairs) > self.CAPACITY:
                return False
            self.clear()
            missing = list(pairs)
        for length, out in missing:
            self.flat[self.used: self.used + length * out] = (
                steps.lanczos_weights(length, out).ravel())
            self.offsets[length, out] = self.used
            self.used += length * out
        return True


_weights = _Weights()


def _resampling(firsts: np.ndarray, lasts: np.ndarray, out_lengths: np.ndarray, box: int,
                extent: int) -> np.ndarray:
    """float32 [n, box, extent]: the Lanczos weights resampling each digit's span
    (firsts[i] to lasts[i]) to out_lengths[i] pixels, zeros elsewhere."""
    lengths = lasts - firsts + 1
    if extent <= _Weights.MAX_LENGTH and box <= steps.WORKING_BOX:
        matrices = np.zeros((len(firsts), box, extent), np.float32)
        store = _weights
        if place_weights(matrices, firsts, lengths, out_lengths, store.offsets, store.flat):
            return matrices
        if store.add(lengths, out_lengths) and place_weights(
                matrices, firsts, lengths, out_lengths, store.offsets, store.flat):
            return matrices
    # A large photo, or more sizes at once than the store holds: numpy's way.
    return steps.resampling_matrices(firsts, lengths, out_lengths, box, extent)


def warm_up() -> None:
    """Compile (or load from numba's cache) every loop, before the first request."""
    rng = np.random.default_rng(0)
    for shape in ((1, 28, 28), (2, 3, 5)):
        digit = np.zeros(shape, np.uint8)
        digit[:, 1:-1, 1:-1] = rng.integers(0, 255, (shape[0], shape[1] - 2, shape[2] - 2))
        normalize(digit)


def _compiled(function):
    # error_model="numpy": a division by zero gives inf or nan, as in the numpy steps
    # (an image without pixels), rather than raising.
    try:
        return numba.njit(cache=True, nogil=True, error_model="numpy")(function)
    except RuntimeError:  # no writable cache directory: compile in this process only
        return numba.njit(nogil=True, error_model="numpy")(function)


@_compiled
def _below(cumulative: np.ndarray, target: float) -> int:
    """How many of the 256 levels' cumulative counts (cumulative[1:], counting pixels
    below each level and at it) fall short of `target`: the level where that share of
    the pixels is reached. The counts only grow: a binary search finds it."""
    low, high = 0, 256  # the answer lies in [low, high]
    while low < high:
        middle = (low + high) // 2
        if cumulative[middle + 1] < target:
            low = middle + 1
        else:
            high = middle
    return low


@_compiled
def _accumulate(counts: np.ndarray, cumulative: np.ndarray) -> None:
    cumulative[0] = 0
    for level in range(256):
        cumulative[level + 1] = cumulative[level] + counts[level]


@_compiled
def _median_deviation(cumulative: np.ndarray, center: int) -> int:
    """The smallest d whose window of levels [center - d, center + d] holds half of them."""
    half = 0.5 * cumulative[256]
    for deviation in range(256):
        above = cumulative[min(center + deviation, 255) + 1]
        below = cumulative[max(center - deviation, 0)]
        if not above - below < half:
            return deviation
    return 256


@_compiled
def light_on_dark(grays: np.ndarray, depth: int, noise_scale: float, low_q: float,
                  high_q: float, min_contrast: float) -> tuple[np.ndarray, np.ndarray]:
    """`app.preprocessing.to_light_on_dark`, image by image: uint8 [n, H, W] -> (ink,
    float32 [n, H, W]; which images hold a digit, bool [n]). `depth` is the frame's
    (`frame_edges`); 0 means each edge is the whole image."""
    n, height, width = grays.shape
    ink = np.empty((n, height, width), np.float32)
    found = np.zeros(n, np.bool_)
    counts = np.zeros(256, np.int64)
    edges = np.zeros((4, 256), np.int64)
    frame = np.zeros(256, np.int64)
    cumulative = np.zeros(257, np.int64)
    frame_cumulative = np.zeros(257, np.int64)
    paper_cumulative = np.zeros(257, np.int64)
    table = np.zeros(256, np.float32)
    for i in range(n):
        image = grays[i]
        counts[:] = 0
        edges[:] = 0
        for y in range(height):
            for x in range(width):
                counts[image[y, x]] += 1
        if depth == 0:
            for edge in range(4):
                edges[edge] = counts
        else:
            for y in range(depth):
                for x in range(width):
                    edges[0, image[y, x]] += 1
                    edges[1, image[height - depth + y, x]] += 1
            for y in range(depth, height - depth):
                for x in range(depth):
                    edges[2, image[y, x]] += 1
                    edges[3, image[y, width - depth + x]] += 1
        frame[:] = edges[0] + edges[1] + edges[2] + edges[3]
        _accumulate(counts, cumulative)
        _accumulate(frame, frame_cumulative)
        total = cumulative[256]
        low = _below(cumulative, total * low_q)
        median = _below(cumulative, total * 0.5)
        high = _below(cumulative, total * high_q)
        frame_level = _below(frame_cumulative, frame_cumulative[256] * 0.5)
        # The frame's larger side of the middle level (the levels below it, or the rest):
        # the paper's, if a digit fills the image.
        middle = (low + high) / 2
        split = 0  # the levels below the middle: 0 .. split - 1
        while split < 256 and split < middle:
            split += 1
        dark_count = frame_cumulative[split]
        paper_is_dark = dark_count > frame_cumulative[256] - dark_count
        for level in range(257):
            if paper_is_dark:
                paper_cumulative[level] = frame_cumulative[min(level, split)]
            else:
                paper_cumulative[level] = frame_cumulative[max(level, split)] - dark_count
        paper_level = _below(paper_cumulative, paper_cumulative[256] * 0.5)
        spread = _median_deviation(cumulative, median)
        frame_spread = _median_deviation(frame_cumulative, frame_level)
        paper_spread = _median_deviation(paper_cumulative, paper_level)
        background = frame_level if frame_spread < spread else median
        deviation = min(spread, frame_spread)
        on_every_edge = True
        for edge in range(4):
            edge_dark, edge_total = 0, 0
            for level in range(256):
                edge_total += edges[edge, level]
                if level < split:
                    edge_dark += edges[edge, level]
            on_paper_side = float(edge_dark if paper_is_dark else edge_total - edge_dark)
            if not on_paper_side / edge_total > 0.25:
                on_every_edge = False
        if (abs(paper_level - median) > 0.25 * (high - low)
                and paper_spread < 0.05 * (high - low) and on_every_edge):
            background = paper_level
            deviation = paper_spread
        noise = noise_scale * deviation
        if (background - low) > (high - background):
            sign, offset = np.float32(-1.0), np.float32(background - noise)
        else:
            sign, offset = np.float32(1.0), np.float32(-(background + noise))
        for level in range(256):
            table[level] = max(np.float32(level) * sign + offset, np.float32(0.0))
        darkest, lightest = 0, 255
        for level in range(256):
            if counts[level] > 0:
                darkest = level
                break
        for level in range(255, -1, -1):
            if counts[level] > 0:
                lightest = level
                break
        peak = max(table[darkest], table[lightest])
        found[i] = peak >= min_contrast and total > 0
        scale = np.float32(255.0) / (peak if found[i] else np.float32(1.0))
        for level in range(256):
            table[level] = table[level] * scale
        for y in range(height):
            for x in range(width):
                ink[i, y, x] = table[image[y, x]]
    return ink, found


@_compiled
def _trimmed_span(profile: np.ndarray, trim: float) -> tuple[int, int]:
    total = 0
    for count in profile:
        total += count
    first, last, cumulative = 0, 0, 0
    for count in profile:
        cumulative += count
        if cumulative <= total * trim:
            first += 1
        if cumulative < total * (1.0 - trim):
            last += 1
    return first, max(first, min(last, len(profile) - 1))


@_compiled
def boxes_and_sizes(ink: np.ndarray, box: int, level: float,
                    trim: float) -> tuple[np.ndarray, np.ndarray]:
    """`app.preprocessing.find_digit_boxes` (int [n, 4]: top, bottom, left, right) and
    `fitted_sizes` (int [n, 2]: height, width once the longest side is `box`)."""
    n, height, width = ink.shape
    boxes = np.empty((n, 4), np.int64)
    sizes = np.empty((n, 2), np.int64)
    rows = np.empty(height, np.int64)
    cols = np.empty(width, np.int64)
    for i in range(n):
        rows[:] = 0
        cols[:] = 0
        for y in range(height):
            for x in range(width):
                if ink[i, y, x] >= level:
                    rows[y] += 1
                    cols[x] += 1
        boxes[i, 0], boxes[i, 1] = _trimmed_span(rows, trim)
        boxes[i, 2], boxes[i, 3] = _trimmed_span(cols, trim)
        box_height = boxes[i, 1] - boxes[i, 0] + 1
        box_width = boxes[i, 3] - boxes[i, 2] + 1
        scale = box / max(box_height, box_width)
        sizes[i, 0] = max(1, np.rint(box_height * scale))
        sizes[i, 1] = max(1, np.rint(box_width * scale))
    return boxes, sizes


@_compiled
def place_weights(matrices: np.ndarray, firsts: np.ndarray, lengths: np.ndarray,
                  out_lengths: np.ndarray, offsets: np.ndarray, flat: np.ndarray) -> bool:
    """matrices[i, :out, first:first + length] = the weights stored flat from
    offsets[length, out]; False, with nothing placed, if any are not stored yet."""
    for i in range(len(matrices)):
        if offsets[lengths[i], out_lengths[i]] < 0:
            return False
    extent = matrices.shape[2]
    for i in range(len(matrices)):
        length, out, first = lengths[i], out_lengths[i], firsts[i]
        offset = offsets[length, out]
        # Cut at the edge, as numpy's slice is: a digit with no stroke pixel has its span
        # start just past it (it is never found, but this loop must not write outside).
        for row in range(out):
            for column in range(min(length, extent - first)):
                matrices[i, row, first + column] = flat[offset + row * length + column]
    return True


@_compiled
def to_full_scale(fitted: np.ndarray) -> None:
    """Clip each resampled digit to 0..255 and scale its peak back to 255, in place."""
    n, height, width = fitted.shape
    for i in range(n):
        peak = np.float32(0.0)
        for y in range(height):
            for x in range(width):
                value = min(max(fitted[i, y, x], np.float32(0.0)), np.float32(255.0))
                fitted[i, y, x] = value
                peak = max(peak, value)
        scale = np.float32(255.0) / (peak if peak > 0 else np.float32(1.0))
        for y in range(height):
            for x in range(width):
                fitted[i, y, x] *= scale


@_compiled
def ridge_widths(distances: np.ndarray, steps_per_pixel: int, default: float) -> np.ndarray:
    """`app.preprocessing.stroke_widths` from the masks' distance transform, float32
    [n, H, W] with a blank border: the upper quartile of the distances along each
    digit's ridge (pixels at least as far from the background as their four neighbours)."""
    n, height, width = distances.shape
    widths = np.empty(n, np.float64)
    counts = np.zeros(256, np.int64)
    for i in range(n):
        counts[:] = 0
        for y in range(1, height - 1):
            for x in range(1, width - 1):
                distance = distances[i, y, x]
                if (distance > 0 and distance >= distances[i, y - 1, x]
                        and distance >= distances[i, y + 1, x]
                        and distance >= distances[i, y, x - 1]
                        and distance >= distances[i, y, x + 1]):
                    step = min(np.rint(distance * np.float32(steps_per_pixel)),
                               np.float32(255.0))
                    counts[int(step)] += 1
        total = 0
        for count in counts:
            total += count
        if total == 0:
            widths[i] = default
            continue
        below, cumulative = 0, 0
        for count in counts:
            cumulative += count
            if cumulative < 0.75 * total:
                below += 1
        widths[i] = 2.0 * below / steps_per_pixel - 1.0
    return widths


@_compiled
def place_and_round(fitted: np.ndarray, tops: np.ndarray, lefts: np.ndarray,
                    size: int) -> np.ndarray:
    """Each fitted digit at (tops[i], lefts[i]) of a zero size x size field, cut to the
    field and rounded to uint8 (`app.preprocessing.center_by_mass`'s last step)."""
    n, box, _ = fitted.shape
    out = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        for y in range(box):
            if tops[i] + y >= size:
                break
            for x in range(box):
                if lefts[i] + x >= size:
                    break
                out[i, tops[i] + y, lefts[i] + x] = np.uint8(np.rint(fitted[i, y, x]))
    return out
