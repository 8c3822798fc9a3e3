"""Model lifecycle: new versions go live without a restart, several versions serve side by
side, labels move at run time, and a broken version never takes traffic."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.lifecycle import LoadSettings, ModelWatcher
from app.main import create_app
from app.observability import Metrics
from app.runtimes import Runtime
from app.service import PredictionService
from app.settings import Settings
from app.uploads import Upload
from app.versions import LABELS_FILE, parse_policies, read_labels, write_labels
from digit_contract import LITERT_FILE, METADATA_FILE, Style
from tests.conftest import REPO_ROOT
from tests.images import draw_one, encode
from tests.servers import resident_mib, start_server

PNG = encode(draw_one())
PNG_HEADERS = {"content-type": "image/png"}
POLL_S = 0.2


def publish_version(style_dir: Path, version: int, source: Path) -> None:
    """Write a version as `python -m training` does: copied aside, then renamed into place."""
    staging = style_dir / f".staging-{version}"
    shutil.copytree(source, staging)
    os.rename(staging, style_dir / str(version))


def corrupt_version(style_dir: Path, version: int, source: Path) -> None:
    staging = style_dir / f".staging-{version}"
    shutil.copytree(source, staging)
    (staging / LITERT_FILE).write_bytes(b"not a model")
    (staging / "saved_model.pb").write_bytes(b"not a model")
    os.rename(staging, style_dir / str(version))


def wait_for(condition, timeout_s: float = 10.0, what: str = "the change") -> float:
    """Seconds until `condition()` held; fails after `timeout_s`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"{what} did not happen within {timeout_s} s")
        time.sleep(0.02)
    return time.monotonic() - started


@pytest.fixture
def one_style(tmp_path, tiny_model_dir) -> Path:
    """A model directory with only sequential, version 1 (tiny)."""
    shutil.copytree(tiny_model_dir / "sequential", tmp_path / "sequential")
    return tmp_path


def served_versions(client, style="sequential") -> list[int]:
    return [v["version"] for v in client.get(f"/models/{style}").json()["served"]]


def predicted_version(client, path="/predict") -> int:
    answer = client.post(path, content=PNG, headers=PNG_HEADERS)
    assert answer.status_code == 200, answer.text
    return answer.json()["version"]


def lifecycle_client(model_dir: Path, **settings) -> TestClient:
    # These model directories hold `sequential` only: /predict is asked for it.
    return TestClient(create_app(Settings(model_dir=model_dir, device="cpu",
                                          model_poll_seconds=POLL_S,
                                          default_model="sequential", **settings)))


def test_a_new_version_replaces_the_old_and_a_broken_one_never_serves(one_style):
    style_dir = one_style / "sequential"
    with lifecycle_client(one_style) as client:
        assert predicted_version(client) == 1
        publish_version(style_dir, 2, style_dir / "1")
        wait_for(lambda: served_versions(client) == [2], what="version 2 replacing 1")
        assert predicted_version(client) == 2
        assert client.get("/models/sequential/versions/1").json()["status"] == "available"

        corrupt_version(style_dir, 3, style_dir / "1")
        wait_for(lambda: client.get("/models/sequential/versions/3").json().get("status")
                 == "failed", what="version 3 reported broken")
        listing = client.get("/models/sequential").json()
        assert listing["version"] == 2 and "version 3: failed to load" in listing["detail"]
        assert predicted_version(client) == 2
        missing = client.post("/models/sequential/versions/3/predict", content=PNG,
                              headers=PNG_HEADERS)
        assert missing.status_code == 503 and "Served versions: 2" in missing.json()["detail"]
        metrics = client.get("/metrics").text
        assert 'digits_model_loads_total{model="sequential",outcome="failed"} 1.0' in metrics
        assert 'model="sequential",runtime="litert",version="2"} 1.0' in metrics
        assert 'version="1"' not in metrics.split("digits_model_loaded")[-1]

        # Fixed in place: its files changed, so it is tried again, and now it serves.
        shutil.rmtree(style_dir / "3")
        publish_version(style_dir, 3, style_dir / "1")
        wait_for(lambda: served_versions(client) == [3], what="the repaired version 3")


def test_several_versions_serve_side_by_side_under_a_policy(one_style):
    style_dir = one_style / "sequential"
    publish_version(style_dir, 2, style_dir / "1")
    publish_version(style_dir, 3, style_dir / "1")
    with lifecycle_client(one_style, model_versions="sequential=1,3") as client:
        assert served_versions(client) == [1, 3]
        assert predicted_version(client) == 3
        for version in (1, 3):
            path = f"/models/sequential/versions/{version}/predict"
            assert predicted_version(client, path) == version
            summary = client.get(f"/models/sequential/versions/{version}/summary").json()
            assert summary["version"] == version
        versions = client.get("/models/sequential/versions").json()
        assert [(v["version"], v["status"]) for v in versions["versions"]] == [
            (1, "ready"), (2, "available"), (3, "ready")]
        assert versions["versions"][2]["source"] == "sequential/3/model.tflite"
        assert versions["versions"][2]["load_seconds"] > 0
        absent = client.post("/models/sequential/versions/2/predict", content=PNG,
                             headers=PNG_HEADERS)
        assert absent.status_code == 404 and "Served versions: 1, 3" in absent.json()["detail"]
        # Only a number as its directory is named names a version.
        for odd in ("x", "03", "+3", "3.0", "1_0"):
            assert client.post(f"/models/sequential/versions/{odd}/predict", content=PNG,
                               headers=PNG_HEADERS).status_code == 404, odd


def test_labels_move_at_run_time_and_roll_back(one_style):
    style_dir = one_style / "sequential"
    publish_version(style_dir, 2, style_dir / "1")
    write_labels(style_dir, {"stable": 1, "canary": 2})
    with lifecycle_client(one_style) as client:
        # The policy serves the latest; the labelled version 1 is kept loaded as well.
        assert served_versions(client) == [1, 2]
        assert predicted_version(client, "/models/sequential/labels/stable/predict") == 1
        assert predicted_version(client, "/models/sequential/labels/canary/predict") == 2
        assert client.get("/models/sequential").json()["labels"] == {"stable": 1, "canary": 2}
        unknown = client.post("/models/sequential/labels/beta/predict", content=PNG,
                              headers=PNG_HEADERS)
        assert unknown.status_code == 404 and "canary, stable" in unknown.json()["detail"]

        # Promote the canary, then roll back with the command-line tool.
        write_labels(style_dir, {"stable": 2})
        wait_for(lambda: served_versions(client) == [2], what="version 1 unloaded")
        assert predicted_version(client, "/models/sequential/labels/stable/predict") == 2
        done = subprocess.run([sys.executable, "-m", "app.versions", "sequential", "stable=1",
                               "default=1", "--model-dir", str(one_style)],
                              capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
        assert done.returncode == 0, done.stderr
        wait_for(lambda: predicted_version(client, "/models/sequential/labels/stable/predict")
                 == 1, what="the rollback")
        assert predicted_version(client) == 1  # `default` picks what /predict serves

        # A broken labels file is reported and the labels in force stay.
        (style_dir / LABELS_FILE).write_text("{not json")
        wait_for(lambda: "labels file ignored" in (client.get("/models/sequential").json()
                                                   ["detail"] or ""), what="the report")
        assert predicted_version(client, "/models/sequential/labels/stable/predict") == 1


def test_a_removed_version_is_unloaded_unless_it_is_the_last(one_style):
    style_dir = one_style / "sequential"
    publish_version(style_dir, 2, style_dir / "1")
    with lifecycle_client(one_style, model_versions="sequential=all") as client:
        assert served_versions(client) == [1, 2]
        shutil.rmtree(style_dir / "2")
        wait_for(lambda: served_versions(client) == [1], what="version 2 unloaded")
        assert predicted_version(client) == 1
        shutil.rmtree(style_dir / "1")
        time.sleep(POLL_S * 5)
        assert served_versions(client) == [1] and predicted_version(client) == 1
        assert client.get("/readyz").status_code == 200


def test_a_request_finishes_on_the_version_it_started_with(one_style):
    """Deterministic: a request holds version 1 across the swap to version 2, and version 1
    is only stopped once that request is done."""
    style_dir = one_style / "sequential"

    async def scenario():
        service = PredictionService(Settings(model_dir=one_style, preprocess_workers=0),
                                    Metrics())
        retired = []
        watcher = ModelWatcher(
            LoadSettings(one_style, "/CPU:0", Runtime.auto, 1, {}),
            current=lambda: service.registry, serve=service.serve,
            publish=lambda registry: setattr(service, "registry", registry),
            on_load=lambda *_: None, on_retire=retired.append)
        await watcher.refresh()
        with service.registry.resolve(Style.sequential) as held:
            publish_version(style_dir, 2, style_dir / "1")
            await watcher.refresh()
            assert service.registry.resolve(Style.sequential).model.version == 2
            await asyncio.sleep(0.05)
            assert not retired  # still in use
            answer = await service.predict(held, [Upload("image", PNG)], debug=False)
            assert answer.version == 1 and len(answer.predictions) == 1
        await asyncio.wait_for(watcher.close(), 5)
        assert [model.version for model in retired] == [1]
        await service.stop()

    asyncio.run(scenario())


def test_version_policies_are_checked_at_start_up():
    policies = parse_policies("sequential=1,2; functional=latest:2;subclassed=all")
    assert policies[Style.sequential].specific == (1, 2)
    assert policies[Style.functional].latest == 2
    for bad in ("sequential=", "sequential=latest:0", "convnet=1", "functional=newest"):
        with pytest.raises(ValueError):
            Settings(model_versions=bad)


def test_labels_files_are_checked(tmp_path):
    assert read_labels(tmp_path) == {}
    for bad in ('{"Stable": 1}', '{"stable": "1"}', '{"stable": true}', "[1]", "{"):
        (tmp_path / LABELS_FILE).write_text(bad)
        with pytest.raises(ValueError):
            read_labels(tmp_path)


@pytest.fixture
def real_model_dir(tmp_path) -> Path:
    """The committed sequential model, as version 1."""
    (tmp_path / "sequential").mkdir()
    publish_version(tmp_path / "sequential", 1, REPO_ROOT / "models" / "sequential" / "2")
    return tmp_path


def test_a_version_written_under_load_goes_live_with_no_failed_request(real_model_dir):
    """32 clients send digits while version 2 is written: it serves within the poll
    interval (plus its load), every request gets a 200 naming the version that answered,
    and no request that started after the first version-2 answer got version 1."""
    poll_s = 1.0
    server, base = start_server(real_model_dir, model_poll_seconds=poll_s,
                                default_model="sequential")
    answers, stop = [], threading.Event()

    def client_loop():
        with httpx.Client(base_url=base, timeout=10) as client:
            while not stop.is_set():
                started = time.monotonic()
                response = client.post("/predict", content=PNG, headers=PNG_HEADERS)
                version = response.json().get("version") if response.is_success else None
                answers.append((started, time.monotonic(), response.status_code, version))

    clients = [threading.Thread(target=client_loop) for _ in range(32)]
    try:
        for thread in clients:
            thread.start()
        time.sleep(1.0)
        written = time.monotonic()
        publish_version(real_model_dir / "sequential", 2,
                        REPO_ROOT / "models" / "sequential" / "2")
        wait_for(lambda: any(a[3] == 2 for a in answers), what="a version-2 answer")
        time.sleep(1.0)
    finally:
        stop.set()
        for thread in clients:
            thread.join(15)
        server.terminate()
        server.wait(15)
    assert {status for _, _, status, _ in answers} == {200}, "a request failed"
    assert {version for *_, version in answers} == {1, 2}
    first_new = min(ended for _, ended, _, version in answers if version == 2)
    assert first_new - written < poll_s + 2.0
    late_old = [a for a in answers if a[3] == 1 and a[0] > first_new]
    assert not late_old, f"{len(late_old)} requests started after the swap got version 1"


def test_ten_reloads_do_not_grow_memory(real_model_dir):
    server, base = start_server(real_model_dir, model_poll_seconds=POLL_S,
                                default_model="sequential")
    style_dir = real_model_dir / "sequential"
    source = REPO_ROOT / "models" / "sequential" / "2"
    try:
        with httpx.Client(base_url=base, timeout=10) as client:
            resident = []
            for version in range(2, 13):
                publish_version(style_dir, version, source)
                wait_for(lambda v=version: predicted_version(client) == v,
                         what=f"version {version}")
                shutil.rmtree(style_dir / str(version - 1))
                for _ in range(20):
                    predicted_version(client)
                resident.append(resident_mib(server.pid))
    finally:
        server.terminate()
        server.wait(15)
    # After the first reload (which pays for the lifecycle's own first use), ten more.
    assert resident[-1] <= resident[0] * 1.10, resident


def test_what_an_operator_can_break_is_reported_and_never_stops_the_rest(one_style):
    """From an outside attack: a labels file too deep for the JSON parser, metadata with
    fields of the wrong type, a label moved to a broken version, a version directory named
    '03'. Each is reported; polling and everything that served go on."""
    style_dir = one_style / "sequential"
    publish_version(style_dir, 2, style_dir / "1")
    write_labels(style_dir, {"default": 1})
    (one_style / "functional").mkdir()
    with lifecycle_client(one_style) as client:
        assert predicted_version(client) == 1
        (style_dir / LABELS_FILE).write_text("[" * 50_000)  # deeper than the parser goes
        wait_for(lambda: "not valid JSON" in (client.get("/models/sequential").json()
                                               ["detail"] or ""), what="the report")
        assert predicted_version(client) == 1  # the labels in force stay
        # Polling goes on, for this style and the others.
        publish_version(one_style / "functional", 1, style_dir / "1")
        wait_for(lambda: client.get("/models/functional").json()["status"] == "ready",
                 what="functional version 1")

        broken = json.loads((style_dir / "1" / METADATA_FILE).read_text())
        broken["summary"]["total_params"] = "lots"
        staging = style_dir / ".staging-3"
        shutil.copytree(style_dir / "1", staging)
        (staging / METADATA_FILE).write_text(json.dumps(broken))
        os.rename(staging, style_dir / "3")
        wait_for(lambda: client.get("/models/sequential/versions/3").json().get("status")
                 == "failed", what="version 3 reported broken")
        assert client.get("/models").status_code == 200

        # The default label moved to the broken version stays where it was.
        write_labels(style_dir, {"default": 3})
        wait_for(lambda: "stays on version 1" in (client.get("/models/sequential").json()
                                                  ["detail"] or ""), what="the report")
        assert predicted_version(client) == 1

        publish_version(style_dir, 4, style_dir / "1")
        os.rename(style_dir / "4", style_dir / "04")
        time.sleep(POLL_S * 5)
        assert 4 not in client.get("/models/sequential").json()["versions"]


def test_a_version_changed_in_place_is_loaded_again(one_style):
    """A version copied in without a rename may be loaded half-copied (here: before its
    LiteRT file, so on TensorFlow); once its files change it is loaded again."""
    style_dir = one_style / "sequential"
    (style_dir / "2").mkdir()
    for item in (style_dir / "1").iterdir():
        if item.name != LITERT_FILE:
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, style_dir / "2" / item.name)
    with lifecycle_client(one_style) as client:
        assert client.get("/models/sequential/versions/2").json()["runtime"] == "tensorflow"
        shutil.copy(style_dir / "1" / LITERT_FILE, style_dir / "2" / LITERT_FILE)
        wait_for(lambda: client.get("/models/sequential/versions/2").json()["runtime"]
                 == "litert", what="version 2 loaded again")
        assert predicted_version(client) == 2


@pytest.mark.parametrize("arguments", [
    ["sequential", "stable=²"], ["sequential", "stable=" + "9" * 5000], ["sequential", "x"],
    ["subclassed", "stable=1"], ["sequential"]])
def test_the_labels_tool_explains_instead_of_crashing(one_style, arguments):
    (one_style / "sequential" / LABELS_FILE).write_text("{broken")
    done = subprocess.run([sys.executable, "-m", "app.versions", *arguments, "--model-dir",
                           str(one_style)], capture_output=True, text=True, cwd=REPO_ROOT,
                          timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "error:" in done.stderr
    # And it can repair the file.
    fixed = subprocess.run([sys.executable, "-m", "app.versions", "sequential", "stable=1",
                            "--replace", "--model-dir", str(one_style)], capture_output=True,
                           text=True, cwd=REPO_ROOT, timeout=60)
    assert fixed.returncode == 0 and read_labels(one_style / "sequential") == {"stable": 1}


def test_odd_entries_in_the_model_directory_stop_nothing(one_style):
    # A file where a style's directory should be, and a labels "file" that is a directory.
    (one_style / "functional").write_text("not a directory")
    (one_style / "subclassed").mkdir()
    (one_style / "subclassed" / LABELS_FILE).mkdir()
    with lifecycle_client(one_style) as client:
        assert predicted_version(client) == 1
        publish_version(one_style / "subclassed", 1, one_style / "sequential" / "1")
        wait_for(lambda: client.get("/models/subclassed").json()["status"] == "ready",
                 what="subclassed version 1")
        assert client.get("/models/functional").json()["status"] == "missing"
