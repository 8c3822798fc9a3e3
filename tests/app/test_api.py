"""The HTTP contract, through the app factory and real (tiny) SavedModels."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from app.settings import Settings
from digit_contract import Style
from tests.images import draw_one, encode

STYLES = [style.value for style in Style]
DEFAULT = Settings().default_model.value  # what POST /predict serves
PNG = encode(draw_one())


def assert_predictions(body: dict, model: str, count: int) -> None:
    assert body["model"] == model and body["version"] == 1
    assert len(body["predictions"]) == count
    for prediction in body["predictions"]:
        probabilities = prediction["probabilities"]
        assert len(probabilities) == 10 and sum(probabilities) == pytest.approx(1, abs=1e-4)
        # The digit is a most probable class. (The tiny untrained test models give nearly
        # flat outputs, and two classes can round to the same 6-decimal probability.)
        assert probabilities[prediction["digit"]] == max(probabilities)
        assert prediction["confidence"] == max(probabilities)
        assert "model_input" not in prediction


# --- predictions: every input form --------------------------------------------------------

def test_multipart_single_file_uses_the_default_model(client):
    response = client.post("/predict", files={"file": ("one.png", PNG, "image/png")})
    assert response.status_code == 200
    assert_predictions(response.json(), DEFAULT, 1)


@pytest.mark.parametrize("style", STYLES)
def test_query_parameter_and_path_pick_the_model(client, style):
    by_query = client.post(f"/predict?model={style}", content=PNG,
                           headers={"content-type": "image/png"})
    by_path = client.post(f"/models/{style}/predict", content=PNG,
                          headers={"content-type": "image/png"})
    assert by_query.status_code == by_path.status_code == 200
    assert_predictions(by_query.json(), style, 1)
    assert by_query.json()["predictions"] == by_path.json()["predictions"]


def test_multipart_many_files_answer_in_request_order(client):
    images = [encode(draw_one(box=(90 + 10 * i, 40, 110, 260))) for i in range(3)]
    files = [("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    batch = client.post("/predict", files=files).json()["predictions"]
    singles = [client.post("/predict", content=d, headers={"content-type": "image/png"})
               .json()["predictions"][0] for d in images]
    # One model call for three images may round differently in the last digits than three
    # calls of one: compare closely, not bit for bit.
    for in_batch, alone in zip(batch, singles, strict=True):
        assert in_batch["digit"] == alone["digit"]
        assert in_batch["probabilities"] == pytest.approx(alone["probabilities"], abs=1e-5)


def test_multipart_ignores_other_fields(client):
    response = client.post("/predict", files={"file": ("a.png", PNG, "image/png")},
                           data={"note": "hello"})
    assert_predictions(response.json(), DEFAULT, 1)


def test_octet_stream_body(client):
    response = client.post("/predict", content=PNG,
                           headers={"content-type": "application/octet-stream"})
    assert_predictions(response.json(), DEFAULT, 1)


def test_base64_json_with_and_without_data_url(client):
    text = base64.b64encode(PNG).decode()
    response = client.post("/predict?model=functional",
                           json={"images": [text, f"data:image/png;base64,{text}"]})
    body = response.json()
    assert_predictions(body, "functional", 2)
    assert body["predictions"][0] == body["predictions"][1]


def test_debug_returns_the_28x28_the_model_saw(client):
    response = client.post("/predict?debug=true", content=PNG,
                           headers={"content-type": "image/png"})
    image_bytes = base64.b64decode(response.json()["predictions"][0]["model_input"])
    image = Image.open(io.BytesIO(image_bytes))
    assert image.size == (28, 28) and image.mode == "L"
    pixels = np.asarray(image)
    assert pixels[0, 0] == 0 and pixels.max() == 255  # the dark-on-white bar, inverted



@pytest.mark.parametrize(("query", "status", "debug"), [
    ("debug=yes", 200, True), ("debug=0", 200, False), ("debug=true&debug=off", 200, False),
    ("debug=maybe", 422, None), ("debug=", 422, None), ("other=1", 200, False)])
@pytest.mark.parametrize("path", ["/predict", "/models/functional/predict"])
def test_the_debug_flag_reads_as_a_boolean_query_parameter(client, path, query, status, debug):
    # The prediction routes read their query themselves (for speed): as FastAPI would.
    response = client.post(f"{path}?{query}", content=PNG, headers={"content-type": "image/png"})
    assert response.status_code == status
    if status == 422:
        [problem] = response.json()["detail"]
        assert problem["loc"] == ["query", "debug"] and problem["type"] == "bool_parsing"
    else:
        assert ("model_input" in response.json()["predictions"][0]) is debug

# --- models and summaries -----------------------------------------------------------------

def test_models_lists_every_style(client):
    models = client.get("/models").json()["models"]
    assert [m["name"] for m in models] == STYLES
    for model in models:
        assert set(model) >= {"name", "version", "versions", "device", "status",
                              "total_params", "metrics"}
        assert model["status"] == "ready" and model["device"] == "/CPU:0"
        assert model["version"] == 1 and model["versions"] == [1]
        assert model["metrics"]["val_accuracy"] == 0.1


@pytest.mark.parametrize("style", STYLES)
def test_one_model(client, style, tiny_models):
    body = client.get(f"/models/{style}").json()
    assert body["name"] == style
    assert body["total_params"] == tiny_models[1][Style(style)].count_params()


@pytest.mark.parametrize("style", STYLES)
def test_summary_matches_the_keras_model(client, style, tiny_models):
    keras_model = tiny_models[1][Style(style)]
    body = client.get(f"/models/{style}/summary").json()
    assert body["name"] == style and body["version"] == 1
    assert body["class_name"] == keras_model.__class__.__name__
    assert [(layer["name"], layer["type"], layer["params"]) for layer in body["layers"]] == [
        (layer.name, layer.__class__.__name__, layer.count_params())
        for layer in keras_model.layers]
    assert body["total_params"] == keras_model.count_params()
    trainable = sum(int(np.prod(w.shape)) for w in keras_model.trainable_weights)
    assert body["trainable_params"] == trainable
    assert body["non_trainable_params"] == keras_model.count_params() - trainable
    # Every layer has its output shape, batch dimension null, as Keras' own table shows.
    for layer in body["layers"]:
        assert layer["output_shape"][0] is None
    assert body["layers"][-1]["output_shape"] == [None, 10]


def test_sequential_summary_is_the_classic_table(client):
    """Version 4's: the classic shapes, each convolution normalised (Conv2D, BN, ReLU)."""
    layers = client.get("/models/sequential/summary").json()["layers"]
    assert [layer["output_shape"][1:] for layer in layers] == [
        *[[26, 26, 32]] * 3, [13, 13, 32], *[[11, 11, 64]] * 3, [5, 5, 64],
        *[[3, 3, 128]] * 3, [1152], [128], [128], [10]]
    assert [layer["params"] for layer in layers] == [
        288, 128, 0, 0, 18432, 256, 0, 0, 73728, 512, 0, 0, 147584, 0, 1290]


@pytest.mark.parametrize("style", STYLES)
def test_summary_as_text_is_keras_table(client, style, tiny_models):
    keras_model = tiny_models[1][Style(style)]
    response = client.get(f"/models/{style}/summary?format=text")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert f'Model: "{keras_model.name}"' in response.text
    total = re.search(r"Total params: ([\d,]+)", response.text).group(1)
    assert int(total.replace(",", "")) == keras_model.count_params()


# --- health, metrics, docs ----------------------------------------------------------------

def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "ok", "models": {}}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["models"] == {style: "ready" for style in STYLES}


def test_metrics_count_requests_images_and_inference(client):
    client.post("/predict", files=[("file", ("a.png", PNG, "image/png"))] * 2)
    text = client.get("/metrics").text
    assert 'digits_http_requests_total{method="POST",route="/predict",status="200"}' in text
    assert (f'digits_images_per_request_bucket{{le="2.0",model="{DEFAULT}",protocol="native"}}'
            in text)
    assert re.search(rf'digits_inference_seconds_count\{{model="{DEFAULT}"\}} [1-9]', text)
    assert re.search(rf'digits_batch_size_count\{{model="{DEFAULT}"\}} [1-9]', text)
    assert ('digits_model_loaded{device="/CPU:0",model="functional",runtime="litert",'
            'version="1"} 1.0') in text


def test_openapi_documents_the_endpoints(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/predict", "/models/{style}/predict", "/models", "/models/{style}",
            "/models/{style}/summary", "/healthz", "/readyz", "/metrics"} <= set(paths)
    content = paths["/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "image/*", "application/json"} <= set(content)
    assert client.get("/docs").status_code == 200


def test_openapi_says_each_answer_is_a_digit_or_an_error(client):
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    entries = schemas["PredictResponse"]["properties"]["predictions"]["items"]["anyOf"]
    assert [entry["$ref"].rsplit("/", 1)[-1] for entry in entries] == [
        "Prediction", "PredictionError"]
    assert set(schemas["Prediction"]["required"]) == {"digit", "confidence", "probabilities"}
    assert schemas["PredictionError"]["required"] == ["error"]


# --- errors: a clear 4xx, never a 500 -----------------------------------------------------

@pytest.mark.parametrize("body", [b"", PNG[:100], PNG[:8] + b"\0" * 40])
def test_undecodable_empty_and_truncated_images_are_400(client, body):
    response = client.post("/predict", content=body, headers={"content-type": "image/png"})
    assert response.status_code == 400
    assert response.json()["detail"]


@pytest.mark.parametrize("body", [b"not an image at all", encode(draw_one(), "PPM"),
                                  encode(draw_one(), "ICO"), encode(draw_one(), "TGA")])
def test_formats_outside_the_allow_list_are_415_naming_the_list(client, body):
    response = client.post("/predict", content=body, headers={"content-type": "image/png"})
    assert response.status_code == 415
    assert "PNG, JPEG, WebP, GIF, BMP, TIFF" in response.json()["detail"]


def test_blank_image_is_400(client):
    blank = encode(draw_one(ink=255, paper=255))
    response = client.post("/predict", content=blank, headers={"content-type": "image/png"})
    assert response.status_code == 400 and "No digit" in response.json()["detail"]


def test_one_bad_file_costs_only_itself_and_is_named(client):
    files = [("file", ("good.png", PNG, "image/png")),
             ("file", ("bad.png", PNG[:60], "image/png")),
             ("file", ("also-good.png", PNG, "image/png"))]
    response = client.post("/predict", files=files)
    assert response.status_code == 200
    good, bad, also_good = response.json()["predictions"]
    assert good["digit"] == also_good["digit"] and "error" not in good
    assert bad["error"]["status"] == 400 and "digit" not in bad
    assert "file #2 ('bad.png')" in bad["error"]["detail"]
    metrics = client.get("/metrics").text
    assert f'digits_image_errors_total{{model="{DEFAULT}",status="400"}}' in metrics


def test_a_lone_bad_file_fails_its_request(client):
    response = client.post("/predict", files=[("file", ("bad.png", PNG[:60], "image/png"))])
    assert response.status_code == 400
    assert "file #1 ('bad.png')" in response.json()["detail"]


def test_a_request_with_no_readable_file_fails(client):
    files = [("file", ("bad.png", PNG[:60], "image/png")),
             ("file", ("x.txt", b"hello", "text/plain"))]
    response = client.post("/predict", files=files)
    assert response.status_code == 400
    assert "None of the 2 images" in response.json()["detail"]


def test_bad_base64_costs_only_its_own_image(client):
    text = base64.b64encode(PNG).decode()
    response = client.post("/predict", json={"images": [text, "%%%not base64%%%", text]})
    assert response.status_code == 200
    good, bad, other = response.json()["predictions"]
    alone = client.post("/predict", json={"images": [text]}).json()["predictions"][0]
    assert good == other == alone
    assert bad["error"]["status"] == 400
    assert bad["error"]["detail"].startswith("images[1]: not valid base64")
    # Alone, it fails its request, named the same way.
    response = client.post("/predict", json={"images": ["data:image/png,raw"]})
    assert response.status_code == 400
    assert response.json()["detail"].startswith("images[0]: a data: URL must be base64")


@pytest.mark.parametrize("payload", [{"pictures": []}, {"images": []}, {"images": "abc"},
                                     {"images": [1, 2]}])
def test_invalid_json_fields_are_422(client, payload):
    response = client.post("/predict", json=payload)
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], list)


def test_malformed_json_is_400(client):
    response = client.post("/predict", content=b"{not json",
                           headers={"content-type": "application/json"})
    assert response.status_code == 400


@pytest.mark.parametrize("request_args", [
    {"url": "/predict?model=resnet"}, {"url": "/models/resnet/predict"}])
def test_unknown_model_is_404_listing_the_styles(client, request_args):
    response = client.post(**request_args, content=PNG, headers={"content-type": "image/png"})
    assert response.status_code == 404
    assert all(style in response.json()["detail"] for style in STYLES)


@pytest.mark.parametrize("path", ["/models/resnet", "/models/resnet/summary"])
def test_unknown_model_info_is_404(client, path):
    assert client.get(path).status_code == 404


def test_unknown_summary_format_is_422(client):
    assert client.get("/models/sequential/summary?format=xml").status_code == 422


@pytest.mark.parametrize("content_type", ["text/plain", ""])
def test_unsupported_or_missing_content_type_is_415(client, content_type):
    response = client.post("/predict", content=PNG, headers={"content-type": content_type})
    assert response.status_code == 415
    assert "multipart/form-data" in response.json()["detail"]


def test_multipart_without_a_file_part_is_400(client):
    response = client.post("/predict", data={"note": "no file"},
                           files={"other": ("a.png", PNG, "image/png")})
    assert response.status_code == 400 and "'file'" in response.json()["detail"]


def test_body_over_the_limit_is_413(client, settings):
    big = b"\0" * (settings.max_upload_bytes + 1)
    response = client.post("/predict", content=big, headers={"content-type": "image/png"})
    assert response.status_code == 413 and "limit" in response.json()["detail"]


def test_body_over_the_limit_is_refused_while_streaming(client, settings):
    # No Content-Length: the limit must be enforced as chunks arrive.
    def chunks():
        for _ in range(settings.max_upload_bytes // 10_000 + 2):
            yield b"\0" * 10_000

    response = client.post("/predict", content=chunks(), headers={"content-type": "image/png"})
    assert response.status_code == 413


def test_too_many_images_is_413(client, settings):
    files = [("file", (f"{i}.png", PNG, "image/png"))
             for i in range(settings.max_images_per_request + 1)]
    response = client.post("/predict", files=files)
    assert response.status_code == 413 and "images" in response.json()["detail"]


def test_huge_pixel_dimensions_are_413(client):
    from tests.app.test_decoding import png_header_only

    response = client.post("/predict", content=png_header_only(50_000, 50_000),
                           headers={"content-type": "image/png"})
    assert response.status_code == 413


def test_each_request_logs_one_structured_line(client):
    import json
    import logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("digits.access")
    logger.addHandler(handler)
    try:
        client.post("/predict?model=functional", files=[("file", ("a.png", PNG, "image/png"))] * 3)
    finally:
        logger.removeHandler(handler)
    assert len(records) == 1
    line = json.loads(records[0].getMessage())
    assert line["method"] == "POST" and line["path"] == "/predict" and line["status"] == 200
    assert line["model"] == "functional" and line["images"] == 3 and line["latency_ms"] > 0


def test_module_level_app_is_built_from_the_environment(monkeypatch, tiny_model_dir):
    import app.main as main_module

    monkeypatch.setenv("DIGITS_MODEL_DIR", str(tiny_model_dir))
    monkeypatch.setenv("DIGITS_DEFAULT_MODEL", "functional")  # not the built-in default
    main_module._default_app.cache_clear()
    from fastapi.testclient import TestClient

    with TestClient(main_module.app) as env_client:
        response = env_client.post("/predict", content=PNG, headers={"content-type": "image/png"})
    main_module._default_app.cache_clear()
    assert response.json()["model"] == "functional" != DEFAULT


def test_an_empty_variable_means_the_default(monkeypatch):
    # `DIGITS_HOST=` must not bind every interface, nor `DIGITS_MODEL_DIR=` serve the
    # working directory, nor an empty number stop the service.
    for name in Settings.model_fields:
        monkeypatch.setenv(f"DIGITS_{name.upper()}", "")
    assert Settings() == Settings.model_construct()


def test_the_page_is_served(client):
    page = client.get("/", headers={"accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'src="/static/app.js"' in page.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").status_code == 200
    # Other clients (KServe v1's is_server_live) get the liveness answer there.
    assert client.get("/").json() == {"status": "alive"}


@pytest.mark.parametrize("body", [
    b"--b\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc",  # truncated
    b"--b\r\nContent-Disposition: form-data; name=\"file\"abc\r\n--b--\r\n",  # no header end
    b"no boundary anywhere",
])
def test_malformed_multipart_is_400(client, body):
    response = client.post("/predict", content=body,
                           headers={"content-type": "multipart/form-data; boundary=b"})
    assert response.status_code == 400 and "ultipart" in response.json()["detail"]


def test_multipart_filenames_and_quoted_fields_are_read(client):
    body = (b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="my; seven.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + PNG + b"\r\n--xyz--\r\n")
    response = client.post("/predict", content=body,
                           headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert response.status_code == 200 and len(response.json()["predictions"]) == 1


def test_a_full_queue_answers_503_with_retry_after(tiny_model_dir):
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    settings = Settings(model_dir=tiny_model_dir, device="cpu", max_queue_images=1,
                        preprocess_workers=0)
    with TestClient(create_app(settings)) as small_queue:
        response = small_queue.post("/predict", files=[("file", ("a.png", PNG, "image/png"))] * 2)
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert "retry" in response.json()["detail"]
        shed = f'digits_requests_shed_total{{model="{DEFAULT}"}} 1.0'
        assert shed in small_queue.get("/metrics").text


def test_startup_freezes_the_loaded_heap(client):
    import gc

    # Objects TensorFlow left behind are out of the collector's sight (no long GC pauses).
    assert gc.get_freeze_count() > 10_000
