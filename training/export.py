"""Writing a trained model as the next TensorFlow Serving version: SavedModel + metadata."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import uuid
from pathlib import Path

import keras
import tensorflow as tf

from digit_contract import (
    HISTORY_PLOT_FILE,
    INPUT_SHAPE,
    LITERT_FILE,
    METADATA_FILE,
    NUM_CLASSES,
    PIXEL_CONVENTION,
    SIGNATURE_NAME,
    SUMMARY_TEXT_FILE,
    Style,
    list_versions,
)

INPUT_SIGNATURE = [tf.TensorSpec(shape=(None, *INPUT_SHAPE), dtype=tf.float32, name="image")]


def summarize(model: keras.Model) -> dict:
    """The Keras summary as data and as its text table.

    A SavedModel keeps no Keras structure, so this is recorded at export time for the server.
    """
    lines: list[str] = []
    model.summary(line_length=100, print_fn=lambda line, line_break=True: lines.append(line))
    trainable = sum(int(w.numpy().size) for w in model.trainable_weights)
    total = model.count_params()
    return {
        "class_name": model.__class__.__name__,
        "model_name": model.name,
        "layers": [
            {"name": layer.name, "type": layer.__class__.__name__,
             "output_shape": layer_output_shape(layer), "params": layer.count_params()}
            for layer in model.layers
        ],
        "total_params": total,
        "trainable_params": trainable,
        "non_trainable_params": total - trainable,
        "text": "\n".join(lines),
    }


def layer_output_shape(layer: keras.layers.Layer) -> list[int | None] | None:
    """A layer's output shape, read the way Keras' own summary reads it."""
    # Sequential and Functional layers have graph nodes; a subclassed model's layers only
    # know the shape they were built on, from which Keras computes the output.
    if layer._inbound_nodes:
        shape = layer._inbound_nodes[0].output_tensors[0].shape
    elif getattr(layer, "_build_shapes_dict", None):
        shape = layer.compute_output_shape(**layer._build_shapes_dict)
    else:
        return None
    return list(shape)


def save_history_plot(history: dict[str, list[float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = range(1, len(history["loss"]) + 1)
    figure, (accuracy_axis, loss_axis) = plt.subplots(1, 2, figsize=(10, 3.6))
    for axis, metric in ((accuracy_axis, "accuracy"), (loss_axis, "loss")):
        axis.plot(epochs, history[metric], marker="o", label="training")
        axis.plot(epochs, history[f"val_{metric}"], marker="o", label="validation")
        axis.set_xlabel("epoch")
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def build_metadata(model: keras.Model, style: Style, version: int, extra: dict) -> dict:
    return {
        "style": style.value,
        "version": version,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "signature": SIGNATURE_NAME,
        "input": {"name": "image", "shape": [None, *INPUT_SHAPE], "dtype": "float32",
                  "range": [0.0, 1.0], "pixel_convention": PIXEL_CONVENTION},
        "output": {"shape": [None, NUM_CLASSES], "dtype": "float32",
                   "meaning": "softmax probabilities of digits 0-9"},
        "summary": summarize(model),
        "litert": litert_metadata(),
        **extra,
    }


def export_version(model: keras.Model, style: Style, out_dir: Path, extra_metadata: dict,
                   history: dict[str, list[float]] | None = None) -> Path:
    """Write `model` as `out_dir/<style>/<highest + 1>/`, atomically; return that directory.

    Everything is written into a hidden temporary directory first and renamed into place
    only when complete, so a crash never leaves a half-written version for a server to load,
    and an existing version is never overwritten.
    """
    style_dir = Path(out_dir) / style.value
    style_dir.mkdir(parents=True, exist_ok=True)
    staging = style_dir / f".staging-{uuid.uuid4().hex}"
    try:
        model.export(str(staging), format="tf_saved_model", input_signature=INPUT_SIGNATURE,
                     verbose=False)
        (staging / LITERT_FILE).write_bytes(to_litert(staging))
        while True:
            version = max(list_versions(style_dir), default=0) + 1
            write_metadata(staging, build_metadata(model, style, version, extra_metadata))
            if history:
                save_history_plot(history, staging / HISTORY_PLOT_FILE,
                                  f"{style.value} v{version}")
            final = style_dir / str(version)
            if final.exists():  # another run took this number meanwhile; take the next
                continue
            os.rename(staging, final)
            _fsync_directory(style_dir)
            return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)


LITERT_QUANTIZATION = "dynamic range: int8 weights, float32 input and output"


def litert_metadata() -> dict:
    """What `metadata.json` says, under `litert`, about the version's LiteRT file."""
    return {"file": LITERT_FILE, "quantization": LITERT_QUANTIZATION}


def to_litert(saved_model_dir: Path) -> bytes:
    """The SavedModel's serving signature as a LiteRT flatbuffer, its weights quantised to
    int8 (dynamic range: each layer's activations are quantised on the fly, so no
    calibration data is needed, and the model still takes and gives float32).

    XNNPACK then runs the convolutions as int8 dot products: 2.6-4.5x the images/s of the
    float32 file on this CPU (`python -m bench.quantization`), with probabilities within
    0.05 of the SavedModel's and the same answer for all but one of the 17,868 real and
    held-out digits that `python -m bench.accuracy --runtimes` gives sequential v3 and
    subclassed v3.
    """
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return converter.convert()


def add_litert(version_dir: Path) -> bool:
    """Give an existing version its LiteRT file, and its metadata the `litert` entry that
    says how the file was made, each written atomically; False if it has one."""
    target = version_dir / LITERT_FILE
    if target.exists():
        return False
    _replace_atomically(target, to_litert(version_dir))
    metadata_file = version_dir / METADATA_FILE
    if metadata_file.is_file():
        metadata = json.loads(metadata_file.read_text())
        metadata["litert"] = litert_metadata()
        _replace_atomically(metadata_file, metadata_json(metadata).encode())
    return True


def _replace_atomically(target: Path, content: bytes) -> None:
    staging = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
    try:
        staging.write_bytes(content)
        os.replace(staging, target)
        _fsync_directory(target.parent)
    finally:
        staging.unlink(missing_ok=True)


def metadata_json(metadata: dict) -> str:
    return json.dumps(metadata, indent=2) + "\n"


def write_metadata(version_dir: Path, metadata: dict) -> None:
    (version_dir / METADATA_FILE).write_text(metadata_json(metadata))
    (version_dir / SUMMARY_TEXT_FILE).write_text(metadata["summary"]["text"] + "\n")


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
