"""What preprocessing costs per image, in-process, on held-out MNIST digits as PNGs.

    python -m bench.preprocess [--digests]

Prints a markdown table: decoding one small PNG the general way (Pillow) and the plain-PNG
way (OpenCV), then the whole preparation (decode, normalise, centre) per image for batches
of 1, 16 and 128, normalised by numpy and by the compiled loops of app.kernels. Median of
several timed rounds, on one core, with glibc's allocator tuned as in the server processes
(app.allocator): without it each large temporary is a fresh mapping whose pages fault in,
which the server does not pay.

`--digests` prints instead a hash of the digits prepared from each of bench.accuracy's
sets (10,734 images in all) and from 140 symmetric drawings, whose centre of mass can fall
exactly on a half pixel (where a different order of additions tips the rounding): a change
meant to make preprocessing faster, not different, keeps them. Each set is hashed twice,
normalised by numpy and by the compiled loops of app.kernels, which must agree.
"""

from __future__ import annotations

import argparse
import hashlib
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


SHAPES = ("bar", "ellipse", "ring", "cross", "square")


def symmetric_drawings() -> tuple[list[bytes], None]:
    """Bars, ellipses, rings, crosses and squares centred on pages of several sizes (odd and
    even), dark on light and light on dark, as PNGs; with no labels, in the shape of
    bench.accuracy's sets."""
    from PIL import Image, ImageDraw

    from scripts.realworld_images import encode

    drawings = []
    for width, height in [(28, 28), (64, 64), (100, 100), (280, 280), (200, 300), (300, 200),
                          (1024, 1024)]:
        for shape in SHAPES:
            for ink, paper in ((0, 255), (255, 0)):
                for size in ((width, height), (width + 1, height + 1)):
                    image = Image.new("L", size, paper)
                    draw_centred(ImageDraw.Draw(image), shape, width, height, ink)
                    drawings.append(encode(image))
    return drawings, None


def draw_centred(draw, shape: str, width: int, height: int, ink: int) -> None:
    x, y, r = width // 2, height // 2, min(width, height) // 3
    pen = max(1, width // 25)
    if shape == "bar":
        draw.rectangle((x - pen, y - r, x + pen, y + r), fill=ink)
    elif shape == "ellipse":
        draw.ellipse((x - r // 2, y - r, x + r // 2, y + r), fill=ink)
    elif shape == "ring":
        draw.ellipse((x - r // 2, y - r, x + r // 2, y + r), outline=ink, width=pen)
    elif shape == "cross":
        draw.line((x - r, y, x + r, y), fill=ink, width=pen)
        draw.line((x, y - r, x, y + r), fill=ink, width=pen)
    else:
        draw.rectangle((x - r, y - r, x + r, y + r), fill=ink)


def digests() -> None:
    """sha256 of each set's prepared digits and refusals, in file order."""
    from bench.accuracy import SETS, prepared

    print(f"{'set':12} {'images':>6}  {'numpy':16}  {'compiled':16}")
    for name, make in {**SETS, "symmetric": symmetric_drawings}.items():
        blobs = make()[0]
        found = []
        for compiled in (False, True):
            preprocessing.use_compiled_kernels(compiled)
            digits, refused = prepared(blobs)
            found.append(hashlib.sha256(digits.tobytes() + refused.tobytes()).hexdigest())
        same = "" if found[0] == found[1] else "  DIFFERENT"
        print(f"{name:12} {len(blobs):6}  {found[0][:16]}  {found[1][:16]}{same}")
    preprocessing.use_compiled_kernels(False)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.preprocess", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--digests", action="store_true")
    if parser.parse_args().digests:
        digests()
        return
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
    for compiled in (False, True):
        preprocessing.use_compiled_kernels(compiled)
        how = "compiled loops (server processes)" if compiled else "numpy (decoder processes)"
        for size in (1, 16, 128):
            rows.append((f"prepare a batch of {size}, {how}: inspect + decode + normalise",
                         microseconds_per_image(
                             lambda size=size: preprocessing.prepare_images(blobs[:size],
                                                                            LIMITS),
                             size)))
    preprocessing.use_compiled_kernels(False)
    print("| step | µs per image |\n|---|---:|")
    for name, cost in rows:
        print(f"| {name} | {cost:.1f} |")


if __name__ == "__main__":
    main()
