"""The data loader on tiny npz and IDX files the tests write themselves."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from training.data import DataError, load_digits, read_idx


def fake_digits(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (count, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, count, dtype=np.uint8))


def write_idx(path, array: np.ndarray, compress: bool = False) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def test_npz_with_train_and_test_splits(tmp_path):
    x, y = fake_digits(100)
    x_test, y_test = fake_digits(20, seed=1)
    np.savez(tmp_path / "mnist.npz", x_train=x, y_train=y, x_test=x_test, y_test=y_test)
    digits = load_digits(tmp_path / "mnist.npz", val_size=10)
    np.testing.assert_array_equal(digits.x_train, x[:90])
    np.testing.assert_array_equal(digits.x_val, x[90:])  # the hold-out is the tail
    np.testing.assert_array_equal(digits.y_test, y_test)
    assert digits.source.endswith("mnist.npz") and len(digits.sha256) == 64


def test_npz_without_a_test_split(tmp_path):
    x, y = fake_digits(50)
    np.savez(tmp_path / "train.npz", x_train=x, y_train=y)
    digits = load_digits(tmp_path / "train.npz", val_size=5)
    assert digits.x_test is None and len(digits.x_train) == 45


@pytest.mark.parametrize("compress", [False, True])
def test_idx_folder(tmp_path, compress):
    x, y = fake_digits(30)
    x_test, y_test = fake_digits(7, seed=3)
    suffix = ".gz" if compress else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", x, compress)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", y, compress)
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", x_test, compress)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", y_test, compress)
    digits = load_digits(tmp_path, val_size=3)
    np.testing.assert_array_equal(digits.x_train, x[:27])
    np.testing.assert_array_equal(digits.y_val, y[27:])
    np.testing.assert_array_equal(digits.x_test, x_test)


def test_missing_path_says_what_to_do(tmp_path):
    with pytest.raises(DataError, match="--data"):
        load_digits(tmp_path / "nowhere.npz", val_size=10)


def test_folder_without_idx_files(tmp_path):
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_digits(tmp_path, val_size=10)


def test_not_an_npz(tmp_path):
    (tmp_path / "mnist.npz").write_bytes(b"this is not a zip archive")
    with pytest.raises(DataError, match="npz"):
        load_digits(tmp_path / "mnist.npz", val_size=10)


def test_npz_with_wrong_keys_or_shapes(tmp_path):
    x, y = fake_digits(10)
    np.savez(tmp_path / "keys.npz", images=x, labels=y)
    with pytest.raises(DataError, match="x_train"):
        load_digits(tmp_path / "keys.npz", val_size=2)
    np.savez(tmp_path / "shape.npz", x_train=x[:, :20], y_train=y)
    with pytest.raises(DataError, match=r"\[n, 28, 28\]"):
        load_digits(tmp_path / "shape.npz", val_size=2)
    np.savez(tmp_path / "count.npz", x_train=x, y_train=y[:5])
    with pytest.raises(DataError, match="labels"):
        load_digits(tmp_path / "count.npz", val_size=2)


def test_truncated_and_bad_idx_files(tmp_path):
    x, _ = fake_digits(5)
    write_idx(tmp_path / "full", x)
    (tmp_path / "short").write_bytes((tmp_path / "full").read_bytes()[:-10])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "short")
    (tmp_path / "bad").write_bytes(b"\x12\x34\x56\x78" + bytes(100))
    with pytest.raises(DataError, match="magic"):
        read_idx(tmp_path / "bad")


def test_validation_size_is_checked(tmp_path):
    x, y = fake_digits(10)
    np.savez(tmp_path / "small.npz", x_train=x, y_train=y)
    with pytest.raises(DataError, match="val-size"):
        load_digits(tmp_path / "small.npz", val_size=10)


def test_environment_variable_is_used_when_no_path_is_given(tmp_path, monkeypatch):
    x, y = fake_digits(20)
    np.savez(tmp_path / "env.npz", x_train=x, y_train=y)
    monkeypatch.setenv("DIGITS_MNIST", str(tmp_path / "env.npz"))
    assert len(load_digits(None, val_size=4).x_train) == 16


def test_nothing_available_lists_what_was_tried(monkeypatch, tmp_path):
    import training.data as data

    monkeypatch.delenv("DIGITS_MNIST", raising=False)

    def offline():
        raise OSError("no network")

    monkeypatch.setattr(data, "_load_keras_mnist", offline)
    with pytest.raises(DataError, match="keras.datasets.mnist .*no network"):
        load_digits(None, val_size=10)
