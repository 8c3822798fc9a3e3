"""Standard protocols with their real clients, unchanged: Triton's `tritonclient` over
Open Inference Protocol v2 HTTP, against `python -m app`. Answers must agree with
`/predict` on the same digits."""

from __future__ import annotations

import base64
import gzip
import io
import json
import shutil
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.settings import Settings
from digit_contract import list_versions
from tests.conftest import REPO_ROOT
from tests.images import draw_one, encode, seven
from tests.servers import free_port, start_server

triton = pytest.importorskip("tritonclient.http")
InferenceServerException = pytest.importorskip("tritonclient.utils").InferenceServerException

DIGITS = [encode(draw_one()), encode(Image.fromarray(seven())),
          encode(draw_one(box=(70, 30, 120, 270)))]


GRPC_PORT = free_port()
# The version the registry serves for sequential: its highest.
SERVED = str(list_versions(REPO_ROOT / "models" / "sequential")[-1])


@pytest.fixture(scope="module")
def service():
    server, base = start_server(REPO_ROOT / "models", access_log="false",
                                grpc_port=GRPC_PORT)
    try:
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def client(service):
    return triton.InferenceServerClient(service.removeprefix("http://"))


@pytest.fixture(scope="module")
def native(service):
    """What /predict answers for DIGITS: probabilities, and the 28x28 digits it saw."""
    answer = httpx.post(f"{service}/models/sequential/predict?debug=true",
                        files=[("file", (f"{k}.png", png)) for k, png in enumerate(DIGITS)])
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    probabilities = np.array([p["probabilities"] for p in predictions], dtype=np.float32)
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(p["model_input"]))))
                       for p in predictions])
    return probabilities, (pixels.astype(np.float32) / 255)[..., np.newaxis]


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("sequential") and client.is_model_ready("functional_image")
    assert client.is_model_ready("sequential", model_version=SERVED)
    assert not client.is_model_ready("resnet")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    tensor = client.get_model_metadata("sequential")
    assert tensor["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 28, 28, 1]}]
    assert tensor["outputs"] == [{"name": "output_0", "datatype": "FP32", "shape": [-1, 10]}]
    assert SERVED in tensor["versions"]
    image = client.get_model_metadata("subclassed_image")
    assert image["inputs"] == [{"name": "image_bytes", "datatype": "BYTES", "shape": [-1]}]


@pytest.mark.parametrize("binary", [True, False])
def test_fp32_tensors_agree_with_predict(client, native, binary):
    probabilities, tensors = native
    item = triton.InferInput("image", list(tensors.shape), "FP32")
    item.set_data_from_numpy(tensors, binary_data=binary)
    output = triton.InferRequestedOutput("output_0", binary_data=binary)
    result = client.infer("sequential", [item], outputs=[output], request_id="r-1")
    assert result.get_response()["id"] == "r-1"
    assert result.get_response()["model_version"] == SERVED
    answer = result.as_numpy("output_0")
    assert answer.shape == (3, 10)
    assert np.abs(answer - probabilities).max() < 1e-5
    assert list(answer.argmax(1)) == [1, 7, 1]


@pytest.mark.parametrize("binary", [True, False])
def test_bytes_images_agree_with_predict(client, service, native, binary):
    probabilities, _ = native
    item = triton.InferInput("image_bytes", [len(DIGITS)], "BYTES")
    if binary:
        item.set_data_from_numpy(np.array(DIGITS, dtype=np.object_))
    else:  # in JSON a PNG travels as base64 text, as the kserve SDK's users send it
        item.set_data_from_numpy(np.array([base64.b64encode(png) for png in DIGITS],
                                          dtype=np.object_), binary_data=False)
    result = client.infer("sequential_image", [item])
    assert np.abs(result.as_numpy("output_0") - probabilities).max() < 1e-5


def test_errors_are_protocol_errors(client, service):
    tensors = np.zeros((1, 28, 28), dtype=np.float32)
    item = triton.InferInput("image", [1, 28, 28], "FP32")
    item.set_data_from_numpy(tensors)
    with pytest.raises(InferenceServerException, match="must be FP32") as wrong_shape:
        client.infer("sequential", [item])
    assert wrong_shape.value.status() == "400"
    with pytest.raises(InferenceServerException, match="Unknown model") as unknown:
        client.infer("resnet", [item])
    assert unknown.value.status() == "404"
    with pytest.raises(InferenceServerException, match="not being served"):
        client.get_model_metadata("sequential", model_version="9")

    broken = triton.InferInput("image_bytes", [2], "BYTES")
    broken.set_data_from_numpy(np.array([DIGITS[0], b"not an image"], dtype=np.object_))
    with pytest.raises(InferenceServerException, match=r"image_bytes\[1\]") as unreadable:
        client.infer("sequential_image", [broken])
    assert unreadable.value.status() == "400"

    # Plain HTTP: the body is JSON whatever the Content-Type (curl -d sends a form's).
    for body, status in [(b"{", 400), (b'{"inputs": []}', 400),
                         (json.dumps({"inputs": [{"name": "image", "datatype": "FP32",
                                                  "shape": [1, 28, 28, 1],
                                                  "data": [0.0] * 5}]}).encode(), 400)]:
        answer = httpx.post(f"{service}/v2/models/sequential/infer", content=body,
                            headers={"content-type": "application/x-www-form-urlencoded"})
        assert answer.status_code == status and set(answer.json()) == {"error"}, answer.text
    curl_like = httpx.post(f"{service}/v2/models/sequential/infer", content=json.dumps(
        {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 28, 28, 1],
                     "data": [0.0] * 784}]}),
        headers={"content-type": "application/x-www-form-urlencoded"})
    assert curl_like.status_code == 200
    assert curl_like.json()["outputs"][0]["shape"] == [1, 10]


# --- TensorFlow Serving REST (/v1), with plain HTTP as TensorFlow Serving's examples use --

def test_tfs_status_metadata_and_models(service):
    status = httpx.get(f"{service}/v1/models/sequential").json()
    assert status["model_version_status"] == [
        {"version": SERVED, "state": "AVAILABLE", "status": {"error_code": "OK",
                                                          "error_message": ""}}]
    assert status["ready"] is True
    metadata = httpx.get(f"{service}/v1/models/sequential/versions/{SERVED}/metadata").json()
    assert metadata["model_spec"] == {"name": "sequential", "signature_name": "",
                                      "version": SERVED}
    signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    # Read from the SavedModel itself, as TensorFlow Serving prints it.
    assert signature["inputs"]["image"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in signature["inputs"]["image"]["tensor_shape"]["dim"]] == [
        "-1", "28", "28", "1"]
    assert signature["outputs"]["output_0"]["name"].startswith("StatefulPartitionedCall")
    image = httpx.get(f"{service}/v1/models/sequential_image/metadata").json()
    image_input = image["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert image_input["inputs"]["image_bytes"]["dtype"] == "DT_STRING"
    assert "sequential_image" in httpx.get(f"{service}/v1/models").json()["models"]
    assert httpx.get(service).json() == {"status": "alive"}


def test_tfs_predict_rows_and_columns_agree_with_predict(service, native):
    probabilities, tensors = native
    url = f"{service}/v1/models/sequential:predict"
    # TensorFlow Serving's own examples post a JSON string with no Content-Type, curl -d
    # with a form's: both are read as JSON.
    rows = httpx.post(url, content=json.dumps({"instances": tensors.tolist()}),
                      headers={"content-type": "application/x-www-form-urlencoded"})
    assert rows.status_code == 200, rows.text
    assert np.abs(np.array(rows.json()["predictions"]) - probabilities).max() < 1e-5
    columns = httpx.post(f"{service}/v1/models/sequential/versions/{SERVED}:predict",
                         content=json.dumps({"signature_name": "serving_default",
                                             "inputs": {"image": tensors.tolist()}}))
    assert np.abs(np.array(columns.json()["outputs"]) - probabilities).max() < 1e-5
    images = httpx.post(f"{service}/v1/models/sequential_image:predict", content=json.dumps(
        {"instances": [{"b64": base64.b64encode(png).decode()} for png in DIGITS]}))
    assert np.abs(np.array(images.json()["predictions"]) - probabilities).max() < 1e-5


@pytest.mark.parametrize(("path", "body", "status"), [
    ("/v1/models/resnet:predict", {"instances": [[0]]}, 404),
    ("/v1/models/sequential:predict", {"instances": [[0.0] * 784]}, 400),  # flat, not 28x28x1
    ("/v1/models/sequential:predict", {"instances": [], "inputs": []}, 400),
    ("/v1/models/sequential:predict", {"signature_name": "other", "instances": [[0]]}, 400),
    ("/v1/models/sequential/versions/9:predict", {"instances": [[0]]}, 404),
    ("/v1/models/sequential/labels/beta:predict", {"instances": [[0]]}, 400),
    ("/v1/models/sequential:classify", {"examples": []}, 400),
    ("/v1/models/sequential_image:predict", {"instances": ["not b64"]}, 400),
    ("/v1/models/sequential_image:predict", {"instances": [{"b64": "AAAA"}]}, 400),
])
def test_tfs_errors(service, path, body, status):
    answer = httpx.post(service + path, content=json.dumps(body))
    assert answer.status_code == status, answer.text
    assert set(answer.json()) == {"error"}


# --- Open Inference Protocol v2 over gRPC, with tritonclient's gRPC client ----------------
# (This process never imports the service's own copy of the `inference` protos: the two
# copies cannot share one protobuf registry. The server runs in its own process.)

@pytest.fixture(scope="module")
def grpc_client(service):
    grpc_api = pytest.importorskip("tritonclient.grpc")
    return grpc_api, grpc_api.InferenceServerClient(f"127.0.0.1:{GRPC_PORT}")


def test_grpc_health_and_metadata(grpc_client):
    _, client = grpc_client
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("sequential") and client.is_model_ready("sequential_image")
    assert not client.is_model_ready("resnet")
    assert not client.is_model_ready("sequential", model_version="9")
    metadata = client.get_model_metadata("functional", as_json=True)
    assert metadata["inputs"] == [{"name": "image", "datatype": "FP32",
                                   "shape": ["-1", "28", "28", "1"]}]
    assert "binary_tensor_data" in client.get_server_metadata(as_json=True)["extensions"]


def test_grpc_infer_agrees_with_predict(grpc_client, native):
    grpc_api, client = grpc_client
    probabilities, tensors = native
    item = grpc_api.InferInput("image", list(tensors.shape), "FP32")
    item.set_data_from_numpy(tensors)
    result = client.infer("sequential", [item], request_id="g-1")
    assert result.get_response().id == "g-1" and result.get_response().model_version == SERVED
    assert np.abs(result.as_numpy("output_0") - probabilities).max() < 1e-5
    images = grpc_api.InferInput("image_bytes", [len(DIGITS)], "BYTES")
    images.set_data_from_numpy(np.array(DIGITS, dtype=np.object_))
    result = client.infer("sequential_image", [images])
    assert np.abs(result.as_numpy("output_0") - probabilities).max() < 1e-5


def test_grpc_errors_are_status_codes(grpc_client):
    grpc_api, client = grpc_client
    item = grpc_api.InferInput("image", [1, 28, 28], "FP32")
    item.set_data_from_numpy(np.zeros((1, 28, 28), dtype=np.float32))
    with pytest.raises(InferenceServerException, match="must be FP32") as wrong_shape:
        client.infer("sequential", [item])
    assert wrong_shape.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException, match="Unknown model") as unknown:
        client.infer("resnet", [item])
    assert unknown.value.status() == "StatusCode.NOT_FOUND"
    broken = grpc_api.InferInput("image_bytes", [1], "BYTES")
    broken.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_))
    with pytest.raises(InferenceServerException, match=r"image_bytes\[0\]") as unreadable:
        client.infer("sequential_image", [broken])
    assert unreadable.value.status() == "StatusCode.INVALID_ARGUMENT"


@pytest.mark.parametrize("method", ["ModelInfer", "ModelMetadata", "ServerLive"])
def test_grpc_bytes_that_are_no_message_are_invalid_arguments(grpc_client, method):
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{GRPC_PORT}") as channel:
        call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
        with pytest.raises(grpc.RpcError) as refused:
            call(b"\xff\xff\xff garbage", timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Not a valid inference." in refused.value.details()
    _, client = grpc_client
    assert client.is_server_live()  # and the server goes on


def test_the_kserve_manifest_asks_for_the_v2_protocol_on_kserve_ports():
    yaml = pytest.importorskip("yaml")
    runtime, service = yaml.safe_load_all(
        (REPO_ROOT / "deploy" / "kserve" / "inferenceservice.yaml").read_text())
    assert (runtime["kind"], service["kind"]) == ("ServingRuntime", "InferenceService")
    model = service["spec"]["predictor"]["model"]
    assert model["protocolVersion"] == "v2" and model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in [f["name"] for f in
                                            runtime["spec"]["supportedModelFormats"]]
    assert "v2" in runtime["spec"]["protocolVersions"]
    [container] = runtime["spec"]["containers"]
    env = {item["name"]: item["value"] for item in container["env"]}
    # KServe sends HTTP to 8080 and gRPC to 8081, and probes the v2 readiness route.
    assert env["DIGITS_PORT"] == "8080" and env["DIGITS_GRPC_PORT"] == "8081"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"


# --- from an outside attack on the adapters ---------------------------------------------

def test_bodies_past_the_first_256_kb_are_read(client, service, native):
    """The server's HTTP protocol holds a large body at its start until the app asks for
    it: the protocols must ask, or their clients wait 60 s for a 408."""
    _, tensors = native
    many = np.repeat(tensors, 34, axis=0)  # 102 digits: 320 KB as binary FP32
    item = triton.InferInput("image", list(many.shape), "FP32")
    item.set_data_from_numpy(many)
    started = time.monotonic()
    answer = client.infer("sequential", [item]).as_numpy("output_0")
    assert answer.shape == (102, 10) and time.monotonic() - started < 10
    rows = httpx.post(f"{service}/v1/models/sequential:predict", timeout=30,
                      content=json.dumps({"instances": many[:128].tolist()}))
    assert rows.status_code == 200 and len(rows.json()["predictions"]) == 102
    too_many = httpx.post(f"{service}/v1/models/sequential_image:predict", timeout=30,
                          content=json.dumps({"instances": [{"b64": "AAAA"}] * 257}))
    assert too_many.status_code == 413


def test_compressed_requests_are_inflated_within_the_body_limit(client, native):
    probabilities, tensors = native
    item = triton.InferInput("image", list(tensors.shape), "FP32")
    item.set_data_from_numpy(tensors)
    result = client.infer("sequential", [item], request_compression_algorithm="gzip")
    assert np.abs(result.as_numpy("output_0") - probabilities).max() < 1e-5


TENSOR = {"name": "image", "datatype": "FP32", "shape": [1, 28, 28, 1]}


@pytest.mark.parametrize(("body", "headers", "status"), [
    ({"inputs": [{**TENSOR, "data": [int("1" + "0" * 400)] + [0] * 783}]}, {}, 400),
    ({"inputs": [{**TENSOR, "shape": [10**10] * 5, "data": [0]}]}, {}, 413),
    ({"inputs": [{**TENSOR, "shape": [10**10] * 500, "data": [0]}]}, {}, 400),
    ({"inputs": [{**TENSOR, "shape": [1] * 65, "data": [0]}]}, {}, 400),
    ({"inputs": [{**TENSOR, "shape": [0, 10**30], "data": []}]}, {}, 413),
    ({"inputs": [{**TENSOR, "data": [float("nan")] * 784}]}, {}, 400),
    ({"inputs": [{**TENSOR, "data": [1e39] * 784}]}, {}, 400),
    ({"inputs": [{**TENSOR, "data": [0] * 784}], "parameters": {"binary_data_output": "no"}},
     {}, 400),
    ({"inputs": [{**TENSOR, "data": [0] * 784}], "id": 7}, {}, 400),
    ({"inputs": [{**TENSOR, "data": [0] * 784}]},
     {"inference-header-content-length": "9" * 5000}, 400),
    ({"inputs": [{**TENSOR, "data": [0] * 784}]}, {"inference-header-content-length": "²"},
     400),
    ({"inputs": [{**TENSOR, "data": [0] * 784}]}, {"content-encoding": "br"}, 415),
    ({"inputs": [{**TENSOR, "datatype": "BYTES", "shape": [200_000],
                  "data": ["AAAA"] * 3}]}, {}, 413),
    # More tensors than a model has: refused before any is read.
    ({"inputs": [{**TENSOR, "data": [0] * 784}] * 9}, {}, 400),
    ({"inputs": [{**TENSOR, "data": [0] * 784}], "outputs": [{"name": "output_0"}] * 9},
     {}, 400),
])
def test_oip_refuses_what_it_cannot_use_with_a_4xx(service, body, headers, status):
    content = json.dumps(body).encode()
    headers = {key: value.encode() if value == "²" else value for key, value in headers.items()}
    answer = httpx.post(f"{service}/v2/models/sequential/infer", content=content,
                        headers=headers)
    assert answer.status_code == status, answer.text
    assert set(answer.json()) == {"error"}


@pytest.mark.parametrize("instances", [[[[[1e39]] * 28] * 28], [[[[float("nan")]] * 28] * 28]])
def test_tfs_refuses_values_the_answer_could_not_carry(service, instances):
    answer = httpx.post(f"{service}/v1/models/sequential:predict",
                        content=json.dumps({"instances": instances}))
    assert answer.status_code == 400 and "NaN" in answer.json()["error"]


@pytest.mark.parametrize("value", ["0.5", True, None])
def test_tensors_must_be_json_numbers(service, value):
    # Strings, booleans and nulls are not numbers, whatever numpy would make of them.
    tfs = httpx.post(f"{service}/v1/models/sequential:predict",
                     content=json.dumps({"instances": [[[[value]] * 28] * 28]}))
    assert tfs.status_code == 400 and "must be numbers" in tfs.json()["error"]
    oip = httpx.post(f"{service}/v2/models/sequential/infer",
                     content=json.dumps({"inputs": [{**TENSOR, "data": [value] * 784}]}))
    assert oip.status_code == 400 and "must be numbers" in oip.json()["error"]


def test_strings_in_tensor_data_cost_no_more_than_their_bytes(service):
    # As an array of strings, each element is as wide as the longest: this 400 KB body
    # would take 400 MB, and a 6 MB one a failed 3.6 TiB allocation (a 500).
    data = ["0" * 100_000] + ["1"] * 999
    for path, body in [("/v2/models/sequential/infer",
                        {"inputs": [{**TENSOR, "shape": [1000], "data": data}]}),
                       ("/v1/models/sequential:predict", {"instances": [data]})]:
        answer = httpx.post(f"{service}{path}", content=json.dumps(body), timeout=30)
        assert answer.status_code == 400 and "must be numbers" in answer.json()["error"]


def test_tfs_bodies_may_be_compressed(service, native):
    probabilities, tensors = native
    body = gzip.compress(json.dumps({"instances": tensors.tolist()}).encode())
    answer = httpx.post(f"{service}/v1/models/sequential:predict", content=body,
                        headers={"content-encoding": "gzip"})
    assert answer.status_code == 200, answer.text
    assert np.abs(np.array(answer.json()["predictions"]) - probabilities).max() < 1e-5
    bomb = gzip.compress(b" " * 20_000_000)
    refused = httpx.post(f"{service}/v1/models/sequential:predict", content=bomb,
                         headers={"content-encoding": "gzip"})
    assert refused.status_code == 413


def test_grpc_counts_are_checked_before_anything_is_copied(grpc_client):
    grpc_api, client = grpc_client
    from tritonclient.grpc import service_pb2

    stub = client._client_stub
    request = service_pb2.ModelInferRequest(model_name="sequential_image")
    item = request.inputs.add(name="image_bytes", datatype="BYTES", shape=[1])
    item.contents.bytes_contents.extend([b""] * 3)
    with pytest.raises(Exception, match="3 elements") as refused:
        stub.ModelInfer(request)
    assert "INVALID_ARGUMENT" in str(refused.value)
    # Two million of them are refused before the message is even parsed (below).
    item.contents.bytes_contents.extend([b""] * 2_000_000)
    with pytest.raises(Exception, match="more than 4,096 fields") as refused:
        stub.ModelInfer(request)
    assert "RESOURCE_EXHAUSTED" in str(refused.value)
    mixed = service_pb2.ModelInferRequest(model_name="sequential")
    tensor = mixed.inputs.add(name="image", datatype="FP32", shape=[1, 28, 28, 1])
    tensor.contents.fp32_contents.extend([0.0] * 784)
    mixed.raw_input_contents.append(b"\0" * 4 * 784)
    with pytest.raises(Exception, match="typed contents as well"):
        stub.ModelInfer(mixed)


def test_tfs_metadata_of_a_version_without_a_readable_saved_model(tmp_path):
    """A version can serve from its LiteRT file alone: its metadata is the contract's."""
    shutil.copytree(REPO_ROOT / "models" / "sequential" / "2", tmp_path / "sequential" / "1")
    (tmp_path / "sequential" / "1" / "saved_model.pb").write_bytes(b"\xff" * 10)
    with TestClient(create_app(Settings(model_dir=tmp_path, device="cpu"))) as local:
        metadata = local.get("/v1/models/sequential/metadata")
        assert metadata.status_code == 200, metadata.text
        signature = metadata.json()["metadata"]["signature_def"]["signature_def"]
        assert signature["serving_default"]["inputs"]["image"]["dtype"] == "DT_FLOAT"


@pytest.mark.parametrize("version", ["03", "+3", "3.0", "³"])
def test_protocol_versions_are_numbers_as_written(service, version):
    """The same rule as /models/{style}/versions/{v}: '03' names no version (it would not
    be the directory '3')."""
    answer = httpx.get(f"{service}/v2/models/sequential/versions/{version}/ready")
    assert answer.status_code == 400 and set(answer.json()) == {"error"}
    assert httpx.get(f"{service}/v2/models/sequential/versions/{SERVED}/ready").status_code == 200


def one_input_of_many_parameters() -> bytes:
    """The fields of nested messages count too: one input with 6,000 parameters."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name="sequential")
    item = request.inputs.add(name="image", datatype="FP32", shape=[1, 28, 28, 1])
    for k in range(6_000):
        item.parameters[f"p{k}"].bool_param = True
    return request.SerializeToString()


def one_input_of_a_long_shape() -> bytes:
    """A packed shape of 5 million dimensions: 10 MB, which parse to 40 MB of integers."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name="sequential")
    request.inputs.add(name="image", datatype="FP32", shape=[1] * 5_000_000)
    return request.SerializeToString()


@pytest.mark.parametrize("make_body", [
    # 5 million empty inputs: parsed, 400 MB of objects and 0.2 s holding the interpreter.
    lambda: b"\x0a\x0asequential" + b"\x2a\x00" * 5_000_000,
    # The same after an unknown group, which the parser skips.
    lambda: b"\x0a\x0asequential\x9b\x06\x9c\x06" + b"\x2a\x00" * 5_000_000,
    one_input_of_many_parameters,
    one_input_of_a_long_shape,
])
def test_grpc_messages_of_more_fields_than_any_request_are_refused_unparsed(grpc_client,
                                                                            make_body):
    import grpc

    body = make_body()
    assert len(body) > 64 * 1024
    with grpc.insecure_channel(f"127.0.0.1:{GRPC_PORT}") as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as refused:
            call(body, timeout=30)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "more than 4,096 fields" in refused.value.details()


def test_grpc_typed_bytes_of_a_full_request_are_served(grpc_client, native):
    # 256 images as typed BYTES contents: a large message with one field per image, which
    # the count of fields must let through.
    from tritonclient.grpc import service_pb2

    _, client = grpc_client
    request = service_pb2.ModelInferRequest(model_name="sequential_image")
    item = request.inputs.add(name="image_bytes", datatype="BYTES", shape=[256])
    item.contents.bytes_contents.extend((DIGITS * 86)[:256])
    assert request.ByteSize() > 64 * 1024
    answer = client._client_stub.ModelInfer(request)
    probabilities = np.frombuffer(answer.raw_output_contents[0], "<f4").reshape(256, 10)
    assert np.abs(probabilities[:3] - native[0]).max() < 1e-5


NESTED_LISTS = ",".join(["[" * 400 + "0" + "]" * 400] * 1000)  # 400,000 lists, 999 commas


@pytest.mark.parametrize("path, body", [
    ("/v2/models/sequential/infer",
     '{"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 28, 28, 1], '
     f'"data": [{NESTED_LISTS}]}}]}}'),
    ("/v1/models/sequential:predict", f'{{"instances": [{NESTED_LISTS}]}}'),
    ("/v1/models/sequential:predict",
     '{"instances": [' + ",".join(['{"a":' * 400 + "0" + "}" * 400] * 1000) + "]}"),
])
def test_json_of_more_lists_or_objects_than_any_request_is_refused_unparsed(service, path,
                                                                            body):
    # Few commas, but each "[" or "{" is an object json.loads would build.
    answer = httpx.post(f"{service}{path}", content=body, timeout=30)
    assert answer.status_code == 413, answer.text
    assert "more values" in answer.json()["error"]
