"""Loading: broken or missing models are reported, and the others keep serving."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import tensorflow as tf
from fastapi.testclient import TestClient

from app.devices import DeviceUnavailable, select_device
from app.main import create_app
from app.registry import load_version
from app.runtimes import Runtime
from app.settings import DeviceChoice, Settings
from digit_contract import LITERT_FILE, Style, list_versions
from tests.conftest import REPO_ROOT
from tests.images import draw_one, encode

PNG = encode(draw_one())


def load_style(style_dir, style, device, runtime=Runtime.auto):
    """The style's newest version, loaded and warmed up as the service does."""
    version = list_versions(style_dir)[-1]
    return load_version(style_dir / str(version), style, version, device, runtime)


@pytest.fixture
def mixed_model_dir(tmp_path, tiny_model_dir):
    """sequential: fine. functional: v1 fine, v2 broken. subclassed: only a broken v1."""
    shutil.copytree(tiny_model_dir / "sequential", tmp_path / "sequential")
    shutil.copytree(tiny_model_dir / "functional", tmp_path / "functional")
    shutil.copytree(tiny_model_dir / "functional" / "1", tmp_path / "functional" / "2")
    (tmp_path / "functional" / "2" / "saved_model.pb").write_bytes(b"corrupted")
    (tmp_path / "functional" / "2" / LITERT_FILE).write_bytes(b"corrupted")
    (tmp_path / "subclassed" / "1").mkdir(parents=True)
    (tmp_path / "subclassed" / "1" / "metadata.json").write_text("{}")
    return tmp_path


def test_broken_models_are_reported_and_the_rest_serve(mixed_model_dir):
    with TestClient(create_app(Settings(model_dir=mixed_model_dir, device="cpu"))) as client:
        models = {m["name"]: m for m in client.get("/models").json()["models"]}
        assert models["sequential"]["status"] == "ready"
        # A broken newest version falls back to the newest one that works.
        assert models["functional"]["status"] == "ready"
        assert models["functional"]["version"] == 1 and models["functional"]["versions"] == [1, 2]
        assert "version 2" in models["functional"]["detail"]
        assert models["subclassed"]["status"] == "failed"
        assert models["subclassed"]["version"] is None and models["subclassed"]["detail"]

        assert client.get("/readyz").status_code == 200
        assert client.post("/predict?model=functional", content=PNG,
                           headers={"content-type": "image/png"}).json()["version"] == 1
        broken = client.post("/predict?model=subclassed", content=PNG,
                             headers={"content-type": "image/png"})
        assert broken.status_code == 503
        assert "sequential, functional" in broken.json()["detail"]


def test_a_missing_style_is_404_with_a_hint(tmp_path, tiny_model_dir):
    shutil.copytree(tiny_model_dir / "sequential", tmp_path / "sequential")
    with TestClient(create_app(Settings(model_dir=tmp_path, device="cpu"))) as client:
        info = client.get("/models/functional").json()
        assert info["status"] == "missing"
        assert "python -m training --style functional" in info["detail"]
        response = client.post("/models/functional/predict", content=PNG,
                               headers={"content-type": "image/png"})
        assert response.status_code == 404
        assert client.get("/models/functional/summary").status_code == 404


def test_no_models_at_all_is_not_ready(tmp_path):
    with TestClient(create_app(Settings(model_dir=tmp_path, device="cpu"))) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 503


def test_cpu_is_used_when_asked_or_when_there_is_no_gpu():
    assert select_device(DeviceChoice.cpu) == "/CPU:0"
    expected = "/GPU:0" if tf.config.list_physical_devices("GPU") else "/CPU:0"
    assert select_device(DeviceChoice.auto) == expected


@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="this machine has a GPU")
def test_gpu_without_a_gpu_fails_start_up_clearly(tiny_model_dir):
    with pytest.raises(DeviceUnavailable, match="DIGITS_DEVICE=gpu but TensorFlow sees no GPU"):
        select_device(DeviceChoice.gpu)
    app = create_app(Settings(model_dir=tiny_model_dir, device="gpu"))
    with pytest.raises(DeviceUnavailable), TestClient(app):
        pass


@pytest.mark.parametrize("runtime", list(Runtime)[1:])
def test_either_runtime_matches_the_serving_signature(tiny_model_dir, runtime):
    images = tf.random.uniform((7, 28, 28, 1))
    for style in Style:
        model = load_style(tiny_model_dir / style.value, style, "/CPU:0", runtime)
        assert model.runtime == runtime
        signature = tf.saved_model.load(str(model.path)).signatures["serving_default"]
        expected = next(iter(signature(images).values())).numpy()
        # The LiteRT file has int8 weights (training.export.to_litert); TensorFlow runs
        # the float32 SavedModel itself.
        tolerance = 1e-3 if runtime == Runtime.litert else 1e-6
        assert abs(model.predict(images.numpy()) - expected).max() < tolerance
        # A batch of another size, then the first size again: the interpreter resizes.
        assert model.predict(images.numpy()[:2]).shape == (2, 10)
        assert abs(model.predict(images.numpy()) - expected).max() < tolerance


def test_the_committed_models_agree_across_runtimes(mnist_validation):
    """A CPU server (LiteRT, int8 weights since version 3) and a GPU server (the float32
    SavedModel) give the same digits, with probabilities close."""
    digits, _ = mnist_validation
    images = digits[:500, ..., None].astype("float32") / 255
    for style in Style:
        lite, full = (load_style(REPO_ROOT / "models" / style.value, style, "/CPU:0", runtime)
                      for runtime in (Runtime.litert, Runtime.tensorflow))
        assert abs(lite.predict(images) - full.predict(images)).max() < 0.06
        assert (lite.predict(images).argmax(1) == full.predict(images).argmax(1)).all()


def test_auto_serves_litert_on_cpu_and_tensorflow_without_the_file(tmp_path, tiny_model_dir):
    shutil.copytree(tiny_model_dir / "sequential", tmp_path / "sequential")
    assert load_style(tmp_path / "sequential", Style.sequential, "/CPU:0").runtime == "litert"
    (tmp_path / "sequential" / "1" / LITERT_FILE).unlink()
    assert load_style(tmp_path / "sequential", Style.sequential, "/CPU:0").runtime == (
        "tensorflow")


def test_a_cpu_server_never_imports_tensorflow(tiny_model_dir):
    # What makes the CPU image small and its start fast: TensorFlow is not even installed
    # there. Here it is installed, and must still not be imported.
    script = f"""
import sys
from fastapi.testclient import TestClient
from app.main import create_app
from app.settings import Settings
from tests.images import draw_one, encode
with TestClient(create_app(Settings(model_dir={str(tiny_model_dir)!r}))) as client:
    answer = client.post("/predict", content=encode(draw_one()),
                         headers={{"content-type": "image/png"}})
    assert answer.status_code == 200, answer.text
    assert client.get("/models").json()["models"][0]["runtime"] == "litert"
assert "tensorflow" not in sys.modules, "TensorFlow was imported"
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_version_whose_metadata_lacks_the_summary_is_broken(tmp_path, tiny_model_dir):
    shutil.copytree(tiny_model_dir / "sequential", tmp_path / "sequential")
    shutil.copytree(tiny_model_dir / "sequential" / "1", tmp_path / "sequential" / "2")
    (tmp_path / "sequential" / "2" / "metadata.json").write_text("{}")
    with TestClient(create_app(Settings(model_dir=tmp_path, device="cpu"))) as client:
        listing = client.get("/models")
        assert listing.status_code == 200
        sequential = next(m for m in listing.json()["models"] if m["name"] == "sequential")
        assert sequential["version"] == 1 and "version 2" in sequential["detail"]
        assert client.get("/models/sequential/summary").status_code == 200
