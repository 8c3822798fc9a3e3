"""`python -m training` end to end, on a few hundred digits for one epoch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from digit_contract import METADATA_FILE
from training.__main__ import main
from training.data import load_digits


def test_one_epoch_smoke_run_writes_a_servable_version(tmp_path, capsys):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 400).astype(np.uint8)
    # Digits the network can tell apart: a bright square whose row encodes the label.
    images = np.zeros((400, 28, 28), dtype=np.uint8)
    for image, label in zip(images, labels, strict=True):
        image[2 + 2 * label: 4 + 2 * label, 8:20] = 255
    np.savez(tmp_path / "tiny.npz", x_train=images, y_train=labels)

    exit_code = main(["--style", "sequential", "--epochs", "1", "--batch-size", "32",
                      "--data", str(tmp_path / "tiny.npz"), "--val-size", "100",
                      "--out", str(tmp_path / "models"), "--tensorboard", str(tmp_path / "tb")])
    assert exit_code == 0
    version_dir = tmp_path / "models" / "sequential" / "1"
    metadata = json.loads((version_dir / METADATA_FILE).read_text())
    assert metadata["metrics"]["epochs_run"] == 1
    assert metadata["data"]["train_samples"] == 300 and metadata["data"]["val_samples"] == 100
    assert metadata["training"]["augment"] is True
    assert (version_dir / "training.png").exists()
    assert any((tmp_path / "tb" / "sequential").rglob("events.out.tfevents.*"))
    serve = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    assert next(iter(serve(tf.zeros((2, 28, 28, 1))).values())).shape == (2, 10)
    table = capsys.readouterr().out
    assert "style" in table and "val_acc" in table and "sequential" in table


def test_missing_data_exits_with_a_message(tmp_path, capsys):
    assert main(["--data", str(tmp_path / "missing.npz")]) == 2
    assert "No MNIST data" in capsys.readouterr().err


@pytest.mark.slow
def test_full_training_reaches_the_promised_accuracy(tmp_path):
    """The sequential network, trained as committed, beats 99.1% on held-out digits."""
    from tests.conftest import mnist_path

    path = mnist_path()
    if path is None:
        pytest.skip("needs ../shared/data/mnist-train.npz")
    assert main(["--style", "sequential", "--data", str(path),
                 "--out", str(tmp_path / "models")]) == 0
    metadata = json.loads((tmp_path / "models/sequential/1" / METADATA_FILE).read_text())
    assert metadata["metrics"]["val_accuracy"] >= 0.991
    assert load_digits(path, 5000).x_val.shape == (5000, 28, 28)
