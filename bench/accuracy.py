"""Accuracy of the served preprocessing and models on real and held-out digits, in process.

    python -m bench.accuracy [--models DIR] [--version N] [--sets dev,mnist,redrawn]

The numbers the real-world work is judged by, fast enough to run after every change (about a
minute): each image goes through `app.preprocessing` exactly as an upload does and through
each style's LiteRT model, so a change to either shows here. The HTTP test
(`tests/app/test_realworld.py`) checks the same figures through the running app.

Sets:
  dev      ../shared/data/realworld-dev/optdigits-train: 1,934 scanned digits by 30 writers
           (Alpaydin & Kaynak, UCI, CC BY 4.0); never trained on.
  mnist    the 5,000 held-out MNIST training digits (the last 5,000), as PNG files.
  redrawn  the same digits re-drawn six ways people send them (scripts/realworld_images.py),
           the first 2,000, as in tests/app/test_accuracy.py.
  heavy_ink, two_level, thick_pen, thin_faint, slanted, tight_crop
           300 held-out digits drawn as each pen-and-writer class of real handwriting
           (scripts/realworld_images.py PENS_AND_WRITERS).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
DEV_SET = SHARED / "realworld-dev" / "optdigits-train"
MNIST = Path(os.environ.get("DIGITS_MNIST", SHARED / "mnist-train.npz"))
STYLES = ("sequential", "functional", "subclassed")


def dev_set(folder: Path = DEV_SET) -> tuple[list[bytes], np.ndarray]:
    """The dev set's encoded images and labels, in file order."""
    items = json.loads((folder / "labels.json").read_text())["items"]
    return ([(folder / item["file"]).read_bytes() for item in items],
            np.array([item["label"] for item in items]))


def mnist_held_out() -> tuple[np.ndarray, np.ndarray]:
    from training.data import load_digits

    digits = load_digits(MNIST, val_size=5000)
    return digits.x_val, digits.y_val


def mnist_pngs() -> tuple[list[bytes], np.ndarray]:
    from PIL import Image

    from scripts.realworld_images import encode

    images, labels = mnist_held_out()
    return [encode(Image.fromarray(image)) for image in images], labels


def redrawn(count: int = 2000) -> tuple[list[bytes], np.ndarray]:
    """Held-out digits re-drawn the six ways, in turn, with a fixed seed."""
    from scripts.realworld_images import REAL_WORLD

    images, labels = mnist_held_out()
    rng = np.random.default_rng(0)
    ways = list(REAL_WORLD.values())
    return ([ways[i % len(ways)](images[i], rng) for i in range(count)], labels[:count])


def pen_and_writer(kind: str, count: int = 300) -> tuple[list[bytes], np.ndarray]:
    """Held-out digits drawn as one of the pen-and-writer classes, with a fixed seed."""
    from scripts.realworld_images import PENS_AND_WRITERS

    images, labels = mnist_held_out()
    rng = np.random.default_rng(1)
    make = PENS_AND_WRITERS[kind]
    return [make(images[i], rng) for i in range(count)], labels[:count]


SETS = {"dev": dev_set, "mnist": mnist_pngs, "redrawn": redrawn,
        **{kind: functools.partial(pen_and_writer, kind)
           for kind in ("heavy_ink", "two_level", "thick_pen", "thin_faint", "slanted",
                        "tight_crop")}}


def prepared(blobs: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """The 28x28 digits the service would feed its models, and which images were refused."""
    from app.decoding import DecodeLimits
    from app.preprocessing import prepare_images

    results = prepare_images(blobs, DecodeLimits())
    refused = np.array([not isinstance(r, np.ndarray) for r in results])
    digits = np.stack([r if isinstance(r, np.ndarray) else np.zeros((28, 28), np.uint8)
                       for r in results])
    return digits, refused


def probabilities(version_dir: Path, digits: np.ndarray) -> np.ndarray:
    from app.runtimes import LiteRTModel
    from digit_contract import LITERT_FILE, scale_pixels

    model = LiteRTModel(version_dir / LITERT_FILE, threads=os.cpu_count() or 1)
    inputs = scale_pixels(digits)[..., np.newaxis]
    return np.concatenate([model(inputs[i: i + 256]) for i in range(0, len(inputs), 256)])


def latest_version(style_dir: Path) -> int:
    """The version the service serves for a style: its highest (digit_contract's rule)."""
    from digit_contract import list_versions

    return list_versions(style_dir)[-1]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.accuracy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=REPO / "models")
    parser.add_argument("--version", type=int, help="default: each style's latest")
    parser.add_argument("--sets", default="dev,mnist,redrawn")
    parser.add_argument("--errors", action="store_true",
                        help="print the dev set's confusions (true -> predicted: count)")
    parser.add_argument("--runtimes", action="store_true",
                        help="compare each model's LiteRT file (what a CPU server runs, int8 "
                             "weights since version 3) with its SavedModel (the GPU path) instead")
    parser.add_argument("--strokes", action="store_true",
                        help="print each set's pen widths (app.preprocessing.stroke_width) "
                             "instead, relative to MNIST_STROKE")
    args = parser.parse_args()
    if args.strokes:
        for name in args.sets.split(","):
            print_stroke_widths(name, SETS[name]()[0])
        return
    if args.runtimes:
        compare_runtimes(args)
        return
    rows = []
    for name in args.sets.split(","):
        blobs, labels = SETS[name]()
        digits, refused = prepared(blobs)
        ensemble = np.zeros((len(labels), 10))
        for style in STYLES:
            version = args.version or latest_version(args.models / style)
            probs = probabilities(args.models / style / str(version), digits)
            ensemble += probs
            rows.append(report(name, f"{style} v{version}", probs, labels, refused, args.errors))
        rows.append(report(name, "ensemble (mean)", ensemble, labels, refused, args.errors))
    print("| set | model | accuracy | refused |\n|---|---|---:|---:|")
    print("\n".join(rows))


def compare_runtimes(args: argparse.Namespace) -> None:
    """How often each model's LiteRT file and SavedModel give the same digit, and the largest
    difference in any probability."""
    from app.runtimes import Runtime, load

    print("| set | model | same answer | largest probability difference |\n|---|---|---:|---:|")
    for name in args.sets.split(","):
        blobs, _ = SETS[name]()
        digits, _ = prepared(blobs)
        inputs = digits[..., np.newaxis].astype(np.float32) / 255
        for style in STYLES:
            version = args.version or latest_version(args.models / style)
            version_dir = args.models / style / str(version)
            full, _keep = load(Runtime.tensorflow, version_dir, "/CPU:0", os.cpu_count() or 1)
            reference = np.concatenate([full(inputs[i: i + 256])
                                        for i in range(0, len(inputs), 256)])
            lite = probabilities(version_dir, digits)
            same = int(np.sum(lite.argmax(axis=1) == reference.argmax(axis=1)))
            print(f"| {name} | {style} v{version} | {same} / {len(digits)} | "
                  f"{np.abs(lite - reference).max():.3f} |", flush=True)


def print_stroke_widths(set_name: str, blobs: list[bytes]) -> None:
    """Percentiles of the pen width each image's digit has at the working size, before the
    preprocessing changes it: what MNIST_STROKE and its thresholds were chosen from."""
    from app import preprocessing as pp
    from app.decoding import DecodeLimits, decode, inspect

    widths = []
    for data in blobs:
        ink, found = pp.to_light_on_dark(decode(data, inspect(data, DecodeLimits()))[None])
        if found[0]:
            working, _ = pp.fit_in_box(ink, pp.find_digit_boxes(ink), box=pp.WORKING_BOX)
            widths.append(pp.stroke_width(np.pad(working[0], 1)))
    percentiles = (1, 5, 25, 50, 75, 95, 99)
    values = np.percentile(widths, percentiles)
    print(f"{set_name}: pen width at {pp.WORKING_BOX} px, percentiles {percentiles}: "
          + ", ".join(f"{v:.2f} px ({v / pp.MNIST_STROKE:.2f}x)" for v in values))


def report(set_name: str, model: str, probs: np.ndarray, labels: np.ndarray,
           refused: np.ndarray, errors: bool) -> str:
    predicted = np.where(refused, -1, probs.argmax(axis=1))
    accuracy = float(np.mean(predicted == labels))
    if errors:
        wrong = predicted != labels
        pairs, counts = np.unique(np.stack([labels[wrong], predicted[wrong]], axis=1), axis=0,
                                  return_counts=True)
        top = sorted(zip(counts.tolist(), pairs.tolist(), strict=True), reverse=True)[:12]
        print(f"{set_name} {model}: " + ", ".join(f"{t}->{p}: {c}" for c, (t, p) in top),
              file=sys.stderr)
    return f"| {set_name} | {model} | {100 * accuracy:.2f}% | {int(refused.sum())} |"


if __name__ == "__main__":
    main()
