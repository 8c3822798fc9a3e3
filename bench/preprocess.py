"""What preprocessing costs per image, in-process, on held-out MNIST digits as PNGs.

    python -m bench.preprocess

Prints a markdown table: decoding one small PNG the general way (Pillow) and the plain-PNG
way (OpenCV), then the whole preparation (decode, normalise, centre) per image for batches
of 1, 16 and 128. Median of several timed rounds, on one core, with glibc's allocator tuned
as in the server processes (app.allocator): without it each large temporary is a fresh
mapping whose pages fault in, which the server does not pay.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from app import allocator, decoding, preprocessing
from bench.run import png, sample_digits

LIMITS = decoding.DecodeLimits()


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
    allocator.tune()
    blobs = [png(digit) for digit in sample_digits(128)]
    one = blobs[0]

    header = decoding.inspect(one, LIMITS)
    rows = [
        ("inspect one 28×28 PNG's header", microseconds_per_image(
            lambda: decoding.inspect(one, LIMITS), 1)),
        ("decode one 28×28 PNG: general path (Pillow)", microseconds_per_image(
            lambda: decoding._decode_with_pillow(one, header), 1)),
        ("decode one 28×28 PNG: plain-PNG path (OpenCV)", microseconds_per_image(
            lambda: decoding._decode_fast_png(one, header), 1)),
    ]
    for size in (1, 16, 128):
        rows.append((f"prepare a batch of {size}: inspect + decode + normalise + centre",
                     microseconds_per_image(
                         lambda size=size: preprocessing.prepare_images(blobs[:size], LIMITS),
                         size)))
    print("| step | µs per image |\n|---|---:|")
    for name, cost in rows:
        print(f"| {name} | {cost:.1f} |")


if __name__ == "__main__":
    main()
