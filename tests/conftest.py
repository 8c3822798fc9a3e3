"""Shared fixtures: tiny exported models (built once per session) and the MNIST sample."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# The compiled loops of app.kernels run unchecked in the service. Here (and in the servers
# the tests start, which inherit the environment) they check every index, so that one out
# of range fails a test instead of reading past an array. numba's cache does not tell the
# two builds apart, so the checked ones always get a cache of their own, whatever the
# environment says (the Docker image sets NUMBA_CACHE_DIR for the service's).
os.environ["NUMBA_BOUNDSCHECK"] = "1"
os.environ["NUMBA_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), "digits-numba-checked")
SHARED_MNIST = REPO_ROOT.parent / "shared" / "data" / "mnist-train.npz"


def mnist_path() -> Path | None:
    candidate = Path(os.environ.get("DIGITS_MNIST", SHARED_MNIST))
    return candidate if candidate.is_file() else None


@pytest.fixture(scope="session")
def mnist_validation() -> tuple[np.ndarray, np.ndarray]:
    """The held-out validation digits (the last 5,000 training digits), never trained on."""
    path = mnist_path()
    if path is None:
        pytest.skip(f"MNIST data not found at {SHARED_MNIST} (set DIGITS_MNIST)")
    from training.data import load_digits

    digits = load_digits(path, val_size=5000)
    return digits.x_val, digits.y_val


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> tuple[Path, dict]:
    """All three styles with their initial weights, exported as version 1 of a model dir.

    Returns the directory and the Keras models, so tests can compare the two.
    """
    from digit_contract import Style
    from training.architectures import ARCHITECTURES
    from training.export import export_version

    model_dir = tmp_path_factory.mktemp("models")
    keras_models = {}
    for style in Style:
        model = ARCHITECTURES[style]()
        export_version(model, style, model_dir, extra_metadata={
            "metrics": {"val_accuracy": 0.1, "val_loss": 2.3, "epochs_run": 0},
            "training": {"epochs": 0}, "data": {"source": "none", "sha256": ""}})
        keras_models[style] = model
    return model_dir, keras_models


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_models) -> Path:
    return tiny_models[0]
