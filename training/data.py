"""Loading MNIST-format digits from an npz file, a folder of IDX files, or Keras' cache."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
from pathlib import Path

import numpy as np

from digit_contract import IMAGE_SIZE

DATA_ENV_VAR = "DIGITS_MNIST"
KERAS_CACHE = Path.home() / ".keras" / "datasets" / "mnist.npz"

# The four files of the original distribution, by split and kind.
IDX_NAMES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


class DataError(RuntimeError):
    """The digits could not be found or read; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Digits:
    """Images as uint8 [n, 28, 28] (light on dark) and labels as uint8 [n]."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    source: str
    sha256: str


def load_digits(path: str | Path | None, val_size: int) -> Digits:
    """Load digits and hold out the last `val_size` training digits for validation.

    Args:
        path: an `mnist.npz` file or a folder of IDX files. None falls back to the
            `DIGITS_MNIST` environment variable, then to `keras.datasets.mnist.load_data()`.
        val_size: how many digits, taken from the end of the training split, are held out.
    """
    x_train, y_train, x_test, y_test, source, sha256 = _read_source(path)
    if not 0 < val_size < len(x_train):
        raise DataError(f"--val-size must be between 1 and {len(x_train) - 1}, got {val_size}.")
    # The hold-out is the tail of the original order: deterministic, and never shuffled in.
    cut = len(x_train) - val_size
    return Digits(
        x_train=x_train[:cut], y_train=y_train[:cut],
        x_val=x_train[cut:], y_val=y_train[cut:],
        x_test=x_test, y_test=y_test, source=source, sha256=sha256,
    )


def _read_source(path: str | Path | None):
    given = path if path is not None else os.environ.get(DATA_ENV_VAR)
    if given:
        given = Path(given)
        if given.is_dir():
            return (*read_idx_folder(given), str(given), _sha256_of_idx(given))
        if given.is_file():
            return (*read_npz(given), str(given), _sha256_of_file(given))
        origin = "--data" if path is not None else f"${DATA_ENV_VAR}"
        raise DataError(f"No MNIST data at {given} (from {origin}): no such file or folder. "
                        "Pass --data with an mnist.npz file or a folder of the four MNIST "
                        "IDX files.")
    try:
        return (*_load_keras_mnist(), "keras.datasets.mnist", _sha256_of_file(KERAS_CACHE))
    except Exception as error:  # noqa: BLE001 - any download or cache failure means "no data"
        raise DataError(
            f"No MNIST data found. Tried: no --data path, no ${DATA_ENV_VAR}, then "
            f"keras.datasets.mnist ({error.__class__.__name__}: {error}). Pass --data PATH "
            f"(an mnist.npz or a folder of IDX files), set ${DATA_ENV_VAR}, or go online so "
            "keras.datasets.mnist.load_data() can download it.") from error


def read_npz(path: Path):
    """Read a Keras-layout npz: x_train, y_train, and optionally x_test, y_test."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except Exception as error:
        raise DataError(f"Cannot read {path} as an npz archive: {error}") from error
    missing = {"x_train", "y_train"} - arrays.keys()
    if missing:
        raise DataError(f"{path} lacks {sorted(missing)}; expected the keys of Keras' mnist.npz "
                        "(x_train, y_train, and optionally x_test, y_test).")
    x_train, y_train = _checked(arrays["x_train"], arrays["y_train"], f"{path} train split")
    x_test = y_test = None
    if "x_test" in arrays and "y_test" in arrays:
        x_test, y_test = _checked(arrays["x_test"], arrays["y_test"], f"{path} test split")
    return x_train, y_train, x_test, y_test


def read_idx_folder(folder: Path):
    """Read the four MNIST IDX files (plain or .gz) from a folder; the test pair is optional."""
    def find(split: str, kind: str) -> Path | None:
        stem = IDX_NAMES[(split, kind)]
        for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"),
                     stem.replace("-idx", ".idx") + ".gz"):
            if (folder / name).is_file():
                return folder / name
        return None

    train_images, train_labels = find("train", "images"), find("train", "labels")
    if train_images is None or train_labels is None:
        raise DataError(f"{folder} has no {IDX_NAMES[('train', 'images')]}[.gz] and "
                        f"{IDX_NAMES[('train', 'labels')]}[.gz]; put the MNIST IDX files there.")
    x_train, y_train = _checked(read_idx(train_images), read_idx(train_labels), "IDX train split")
    x_test = y_test = None
    test_images, test_labels = find("test", "images"), find("test", "labels")
    if test_images is not None and test_labels is not None:
        x_test, y_test = _checked(read_idx(test_images), read_idx(test_labels), "IDX test split")
    return x_train, y_train, x_test, y_test


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file: magic (0, 0, dtype, ndim), big-endian dims, then the data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as stream:
            raw = stream.read()
    except OSError as error:
        raise DataError(f"Cannot read {path}: {error}") from error
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number).")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated: its header is incomplete.")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(f"{path} is truncated or padded: header promises {expected} data bytes, "
                        f"file has {len(raw) - header}.")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _checked(images: np.ndarray, labels: np.ndarray, what: str):
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"{what}: images must be [n, {IMAGE_SIZE}, {IMAGE_SIZE}], "
                        f"got {list(images.shape)}.")
    if labels.shape != (len(images),):
        raise DataError(f"{what}: {len(images)} images but labels of shape {list(labels.shape)}.")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{what}: labels must be digits 0..9.")
    return images.astype(np.uint8, copy=False), labels.astype(np.uint8, copy=False)


def _load_keras_mnist():
    import keras

    (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
    return (*_checked(x_train, y_train, "keras train"), *_checked(x_test, y_test, "keras test"))


def _sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sha256_of_idx(folder: Path) -> str:
    """One digest over the IDX files in name order, so a folder has a single fingerprint."""
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.iterdir() if "idx" in p.name and p.is_file()):
        digest.update(file.name.encode())
        digest.update(bytes.fromhex(_sha256_of_file(file)))
    return digest.hexdigest()
