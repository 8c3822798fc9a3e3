"""Export: SavedModel equivalence, metadata, versioning and atomicity."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from digit_contract import LITERT_FILE, METADATA_FILE, SIGNATURE_NAME, SUMMARY_TEXT_FILE, Style
from training import export


@pytest.mark.parametrize("style", list(Style))
def test_saved_model_gives_the_keras_outputs(tiny_models, style):
    model_dir, keras_models = tiny_models
    images = np.random.default_rng(0).random((16, 28, 28, 1), dtype=np.float32)
    loaded = tf.saved_model.load(str(model_dir / style.value / "1"))
    serve = loaded.signatures[SIGNATURE_NAME]
    assert serve.structured_input_signature[1]["image"].shape.as_list() == [None, 28, 28, 1]
    outputs = next(iter(serve(image=tf.constant(images)).values())).numpy()
    assert outputs.shape == (16, 10) and outputs.dtype == np.float32
    np.testing.assert_allclose(outputs, np.asarray(keras_models[style](images)), atol=1e-5)


@pytest.mark.parametrize("style", list(Style))
def test_the_litert_file_gives_the_keras_outputs(tiny_models, style):
    from ai_edge_litert.interpreter import Interpreter

    model_dir, keras_models = tiny_models
    images = np.random.default_rng(1).random((5, 28, 28, 1), dtype=np.float32)
    interpreter = Interpreter(model_path=str(model_dir / style.value / "1" / LITERT_FILE))
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, list(images.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, images)
    interpreter.invoke()
    outputs = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    # Int8 weights (to_litert): close to the float32 model, not equal to it.
    np.testing.assert_allclose(outputs, np.asarray(keras_models[style](images)), atol=1e-3)
    assert np.abs(outputs - np.asarray(keras_models[style](images))).max() > 0  # quantised
    metadata = json.loads((model_dir / style.value / "1" / METADATA_FILE).read_text())
    assert metadata["litert"]["quantization"].startswith("dynamic range: int8 weights")


def test_an_older_version_gets_its_litert_file_in_place(tmp_path, tiny_model_dir):
    import shutil

    version_dir = tmp_path / "sequential" / "1"
    shutil.copytree(tiny_model_dir / "sequential" / "1", version_dir)
    original = (version_dir / LITERT_FILE).read_bytes()
    (version_dir / LITERT_FILE).unlink()
    metadata = json.loads((version_dir / METADATA_FILE).read_text())
    del metadata["litert"]  # as exported before LiteRT files were
    (version_dir / METADATA_FILE).write_text(json.dumps(metadata))
    assert export.add_litert(version_dir) is True
    assert (version_dir / LITERT_FILE).read_bytes() == original
    recorded = json.loads((version_dir / METADATA_FILE).read_text())
    assert recorded == {**metadata, "litert": {"file": LITERT_FILE,
                                               "quantization": export.LITERT_QUANTIZATION}}
    assert export.add_litert(version_dir) is False  # never overwritten
    assert sorted(p.name for p in version_dir.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("style", list(Style))
def test_metadata_is_complete_and_matches_the_model(tiny_models, style):
    model_dir, keras_models = tiny_models
    model = keras_models[style]
    metadata = json.loads((model_dir / style.value / "1" / METADATA_FILE).read_text())
    assert metadata["style"] == style.value and metadata["version"] == 1
    assert {"created_at", "tensorflow_version", "keras_version", "input", "output", "summary",
            "training", "metrics", "data"} <= metadata.keys()
    assert metadata["tensorflow_version"] == tf.__version__
    assert metadata["input"]["shape"] == [None, 28, 28, 1]
    assert metadata["input"]["range"] == [0.0, 1.0]
    summary = metadata["summary"]
    assert summary["total_params"] == model.count_params()
    assert [layer["name"] for layer in summary["layers"]] == [layer.name for layer in model.layers]
    assert sum(layer["params"] for layer in summary["layers"]) == model.count_params()
    assert summary["trainable_params"] + summary["non_trainable_params"] == model.count_params()
    text = (model_dir / style.value / "1" / SUMMARY_TEXT_FILE).read_text()
    assert text.strip() == summary["text"].strip() and f"{model.count_params():,}" in text


def test_each_export_is_a_new_version(tmp_path, tiny_models):
    model = tiny_models[1][Style.sequential]
    first = export.export_version(model, Style.sequential, tmp_path, {})
    marker = first / "marker"
    marker.write_text("untouched")
    second = export.export_version(model, Style.sequential, tmp_path, {})
    assert (first.name, second.name) == ("1", "2")
    assert marker.read_text() == "untouched"
    assert json.loads((second / METADATA_FILE).read_text())["version"] == 2


def test_versions_continue_after_gaps_and_ignore_other_entries(tmp_path, tiny_models):
    style_dir = tmp_path / "sequential"
    (style_dir / "7").mkdir(parents=True)
    (style_dir / "notes").mkdir()
    written = export.export_version(tiny_models[1][Style.sequential], Style.sequential,
                                    tmp_path, {})
    assert written.name == "8"


def test_an_interrupted_export_leaves_no_version(tmp_path, tiny_models, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt("power cut while writing metadata")

    monkeypatch.setattr(export, "write_metadata", crash)
    with pytest.raises(KeyboardInterrupt):
        export.export_version(tiny_models[1][Style.functional], Style.functional, tmp_path, {})
    assert list((tmp_path / "functional").iterdir()) == []


def test_history_plot_is_written(tmp_path, tiny_models):
    history = {"loss": [1.0, 0.5], "val_loss": [1.1, 0.6], "accuracy": [0.6, 0.8],
               "val_accuracy": [0.55, 0.75]}
    written = export.export_version(tiny_models[1][Style.sequential], Style.sequential,
                                    tmp_path, {}, history=history)
    assert (written / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
