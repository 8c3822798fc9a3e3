"""API keys, the metrics port, the docs switch, and error bodies without paths.

The auth matrix runs the real app (TestClient); the metrics port needs a real server
process, which listens on 127.0.0.1 only.
"""

from __future__ import annotations

import hashlib
import socket

import httpx
import pytest
from fastapi.testclient import TestClient

from app.access import load_key_digests
from app.main import create_app
from tests.images import draw_one, encode
from tests.servers import free_port, start_server

KEYS = ("first-key-0123456789", "second-key-9876543210")
PNG = encode(draw_one(), "PNG")

# (method, path, body) for every kind of route; each must refuse a request without a key.
PROTECTED = [
    ("POST", "/predict", PNG),
    ("POST", "/models/functional/predict", PNG),
    ("GET", "/models", None),
    ("GET", "/models/sequential", None),
    ("GET", "/models/sequential/summary", None),
    ("GET", "/metrics", None),
    ("GET", "/no/such/route", None),  # unknown routes too: nothing is learnt without a key
]
OPEN = ["/healthz", "/readyz", "/", "/static/app.js", "/docs", "/openapi.json"]


@pytest.fixture(scope="module")
def keyed(settings):
    with TestClient(create_app(settings.model_copy(update={"api_keys": ",".join(KEYS)}))
                    ) as client:
        yield client


def call(client, method: str, path: str, body: bytes | None, headers: dict | None = None):
    headers = {**(headers or {}), **({"content-type": "image/png"} if body else {})}
    return client.request(method, path, content=body, headers=headers)


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
def test_without_a_right_key_every_route_answers_401(keyed, method, path, body):
    for headers in ({}, {"x-api-key": "wrong"}, {"authorization": "Bearer wrong"},
                    {"authorization": f"Basic {KEYS[0]}"},  # a key, but not as a bearer token
                    {"x-api-key": KEYS[0][:-1]}, {"x-api-key": KEYS[0] + "x"}):
        answer = call(keyed, method, path, body, headers)
        assert answer.status_code == 401, (headers, answer.text)
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert "API key" in answer.json()["detail"]


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
def test_either_key_in_either_header_is_accepted(keyed, method, path, body):
    expected = 404 if path == "/no/such/route" else 200
    for headers in ({"x-api-key": KEYS[0]}, {"authorization": f"Bearer {KEYS[1]}"},
                    {"authorization": f"bearer {KEYS[0]}"}):
        assert call(keyed, method, path, body, headers).status_code == expected, headers


@pytest.mark.parametrize("path", OPEN)
def test_probes_the_page_and_the_docs_need_no_key(keyed, path):
    assert keyed.get(path).status_code == 200


def test_the_openapi_document_says_which_routes_need_a_key(keyed):
    document = keyed.get("/openapi.json").json()
    assert set(document["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    predict = document["paths"]["/predict"]["post"]
    assert predict["security"] and "401" in predict["responses"]
    assert "security" not in document["paths"]["/healthz"]["get"]


def test_without_keys_everything_is_open_and_no_401_is_documented(client):
    assert client.get("/models").status_code == 200
    assert "401" not in client.get("/openapi.json").json()["paths"]["/predict"]["post"][
        "responses"]


def test_a_file_of_key_digests(tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# operators\n{hashlib.sha256(KEYS[0].encode()).hexdigest()}\n\n"
                         f"sha256:{hashlib.sha256(KEYS[1].encode()).hexdigest()}  # CI\n")
    assert load_key_digests("", keys_file) == [hashlib.sha256(k.encode()).digest() for k in KEYS]
    keys_file.write_text("not-a-digest\n")
    with pytest.raises(ValueError, match="line 1"):
        load_key_digests("", keys_file)


def test_keys_from_a_file_guard_the_app(settings, tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text(hashlib.sha256(KEYS[0].encode()).hexdigest() + "\n")
    app = create_app(settings.model_copy(update={"api_keys_file": keys_file}))
    with TestClient(app) as client:
        assert client.get("/models").status_code == 401
        assert client.get("/models", headers={"x-api-key": KEYS[0]}).status_code == 200


def test_the_docs_can_be_switched_off(settings):
    with TestClient(create_app(settings.model_copy(update={"docs": False}))) as client:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert client.get(path).status_code == 404, path
        assert client.get("/healthz").status_code == 200


def test_public_errors_name_no_path_of_this_machine(tmp_path, tiny_model_dir, settings):
    # A broken newest version and a style with nothing on disk: both explained in /models,
    # neither with a path (the log keeps those).
    import shutil

    model_dir = tmp_path / "models"
    shutil.copytree(tiny_model_dir / "sequential", model_dir / "sequential")
    broken = model_dir / "sequential" / "9"
    broken.mkdir()
    (broken / "metadata.json").write_text("{}")
    with TestClient(create_app(settings.model_copy(update={"model_dir": model_dir}))) as client:
        listing = client.get("/models").text
        missing = client.post("/models/functional/predict", content=PNG,
                              headers={"content-type": "image/png"})
    assert "version 9" in listing and "python -m training --style functional" in listing
    assert missing.status_code == 404
    for text in (listing, missing.text):
        assert str(tmp_path) not in text and "/tmp" not in text


@pytest.fixture(scope="module")
def metrics_server(tiny_model_dir):
    metrics_port = free_port()
    process, base = start_server(tiny_model_dir, metrics_port=metrics_port,
                                 preprocess_workers=0)
    yield base, f"http://127.0.0.1:{metrics_port}"
    process.terminate()
    process.wait(timeout=30)


def test_metrics_on_their_own_port_only(metrics_server):
    base, metrics = metrics_server
    assert httpx.post(f"{base}/predict", content=PNG,
                      headers={"content-type": "image/png"}).status_code == 200
    assert httpx.get(f"{base}/metrics").status_code == 404
    answer = httpx.get(f"{metrics}/metrics")
    assert answer.status_code == 200
    assert 'digits_http_requests_total{method="POST",route="/predict",status="200"}' in answer.text
    assert httpx.get(f"{metrics}/predict").status_code == 404


def test_the_metrics_port_closes_on_a_silent_or_oversized_client(metrics_server):
    port = int(metrics_server[1].rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as oversized:
        oversized.sendall(b"GET /metrics HTTP/1.1\r\nX-Filler: " + b"a" * 20_000)
        assert closed_unanswered(oversized)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as silent:
        assert closed_unanswered(silent)  # after the head timeout (2 s)
    assert httpx.get(f"{metrics_server[1]}/metrics").status_code == 200


def closed_unanswered(sock: socket.socket) -> bool:
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:  # closed with our bytes unread: a reset, equally unanswered
        return True
