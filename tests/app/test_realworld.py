"""Real handwriting over HTTP with the committed models: the dev set's scanned digits by 30
writers, and generated digits of each class that real pens and scanners produce and MNIST
lacks (heavy ink filling the frame, two-level scans, thick, thin and faint, slanted, tight
crops). `python -m bench.accuracy` gives the same figures in process.
"""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from bench.accuracy import DEV_SET, dev_set
from digit_contract import Style
from scripts.realworld_images import PENS_AND_WRITERS
from tests.conftest import REPO_ROOT

# The real-world targets: every style at 97.5% or more, the default model (subclassed) at
# 98.5% (README table: 97.62 / 98.04 / 98.86%).
DEV_FLOORS = {Style.sequential: 0.975, Style.functional: 0.975, Style.subclassed: 0.985}
# Heavy ink (over half the frame, loops filled) and marker pens are the hardest to read.
CLASS_FLOORS = {"heavy_ink": 0.88, "thick_pen": 0.93}
CLASS_FLOOR = 0.96
CLASS_SAMPLES = 150
PER_REQUEST = 32


SETTINGS = Settings(model_dir=REPO_ROOT / "models", device="cpu", access_log=False,
                    max_images_per_request=PER_REQUEST, decode_request_timeout_ms=120_000)


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(SETTINGS)) as client:
        yield client


@pytest.fixture(scope="module")
def dev():
    if not (DEV_SET / "labels.json").exists():
        pytest.skip(f"the dev set is not at {DEV_SET}")
    return dev_set()


def predict(client, style: Style, images: list[bytes], per_request: int) -> list[dict]:
    answers = []
    for start in range(0, len(images), per_request):
        files = [("file", (f"{i}.png", data, "image/png"))
                 for i, data in enumerate(images[start: start + per_request])]
        response = client.post(f"/models/{style.value}/predict", files=files)
        assert response.status_code == 200, response.text
        answers += response.json()["predictions"]
    return answers


def accuracy(answers: list[dict], labels: np.ndarray) -> float:
    refused = [a["error"] for a in answers if "error" in a]
    assert not refused, f"{len(refused)} readable digits refused, e.g. {refused[0]}"
    return float(np.mean(np.array([a["digit"] for a in answers]) == labels))


@pytest.mark.parametrize("style", list(Style))
def test_the_dev_set_is_read_at_32_images_per_request(client, dev, style):
    images, labels = dev
    score = accuracy(predict(client, style, images, PER_REQUEST), labels)
    print(f"{style.value}: {score:.4f} on the {len(images)} dev-set digits, 32 per request")
    assert score >= DEV_FLOORS[style]


def test_one_image_per_request_gives_the_same_answers_as_32(client, dev):
    images, labels = dev
    style = SETTINGS.default_model
    one_by_one = predict(client, style, images, 1)
    together = predict(client, style, images, PER_REQUEST)
    assert [a["digit"] for a in one_by_one] == [a["digit"] for a in together]
    assert accuracy(one_by_one, labels) >= DEV_FLOORS[style]


@pytest.fixture(scope="module")
def pen_and_writer_digits(mnist_validation):
    images, labels = mnist_validation
    picked = np.linspace(0, len(images) - 1, CLASS_SAMPLES).astype(int)
    rng = np.random.default_rng(7)
    return {name: ([make(images[i], rng) for i in picked], labels[picked])
            for name, make in PENS_AND_WRITERS.items()}


@pytest.mark.parametrize("kind", list(PENS_AND_WRITERS))
def test_each_pen_and_writer_class_is_read_and_never_refused(client, pen_and_writer_digits,
                                                              kind):
    images, labels = pen_and_writer_digits[kind]
    for style in Style:
        score = accuracy(predict(client, style, images, PER_REQUEST), labels)
        print(f"{kind}, {style.value}: {score:.3f}")
        assert score >= CLASS_FLOORS.get(kind, CLASS_FLOOR), f"{style.value} on {kind}"
