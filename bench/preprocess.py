"""What preprocessing costs per image, in-process, on held-out MNIST digits as PNGs.

    python -m bench.preprocess

Prints a markdown table: decoding one small PNG the general way (Pillow) and the plain-PNG
way (OpenCV), then the whole preparation (decode, normalise, centre) per image for batches
of 1, 16 and 128. Median of several timed rounds, on one core.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from app import preprocessing
from bench.run import png, sample_digits

MAX_PIXELS = 40_000_000


def microseconds_per_image(work: Callable[[], object], images: int, rounds: int = 7) -> float:
    """Median over `rounds` timed rounds of about 0.2 s each, per image."""
    work()
    started = time.perf_counter()
    work()
    repeats = max(1, int(0.2 / max(time.perf_counter() - started, 1e-6)))
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(repeats):
            work()
        timings.append((time.perf_counter() - started) / repeats / images)
    return statistics.median(timings) * 1e6


def main() -> None:
    blobs = [png(digit) for digit in sample_digits(128)]
    one = blobs[0]

    def general_path() -> object:
        image = preprocessing.orient(preprocessing.decode(one, MAX_PIXELS))
        return preprocessing.to_grayscale(preprocessing.flatten_transparency(image))

    rows = [
        ("decode one 28×28 PNG: general path (Pillow)", microseconds_per_image(general_path, 1)),
        ("decode one 28×28 PNG: plain-PNG path (OpenCV)", microseconds_per_image(
            lambda: preprocessing.decode_plain_png(one, MAX_PIXELS), 1)),
    ]
    for size in (1, 16, 128):
        rows.append((f"prepare a batch of {size}: decode + normalise + centre",
                     microseconds_per_image(
                         lambda size=size: preprocessing.prepare_images(blobs[:size], MAX_PIXELS),
                         size)))
    print("| step | µs per image |\n|---|---:|")
    for name, cost in rows:
        print(f"| {name} | {cost:.1f} |")


if __name__ == "__main__":
    main()
