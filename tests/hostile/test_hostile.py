"""Every hostile input, sent to a real `python -m app`: each gets its 4xx (or a closed
connection) within 2 s, grows no process by 150 MB, and a valid request sent meanwhile is
answered 200 within 1 s."""

from __future__ import annotations

import base64
import os
import signal
import socket
import threading
import time

import httpx
import pytest

from tests.hostile.inputs import cases, digit_png, multipart
from tests.hostile.probe import attack, neighbour, send_raw, slowdown
from tests.images import draw_one, encode
from tests.servers import decoder_processes, resident_mib, start_server

SECONDS = 2.0
NEIGHBOUR_SECONDS = 1.0
GROWTH_MIB = 150


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    process, base = start_server(tiny_model_dir, preprocess_workers=2)
    yield process, base
    process.terminate()
    process.wait(timeout=30)


@pytest.mark.parametrize("hostile", cases(), ids=lambda hostile: hostile.name)
def test_a_hostile_request_is_refused_cheaply_and_alone(server, hostile):
    # The promise is for a machine doing nothing else; when other work holds the cores
    # (CI's neighbours, a stress run), the time limits stretch by as much as a busy loop
    # does: at the decoders' nice 10 for the hostile request, at 0 for its neighbour.
    stretch, decoder_stretch = slowdown(), slowdown(niceness=10)
    result = attack(server, hostile)
    assert result["status"] in hostile.expect or result["status"] is None, result
    assert result["seconds"] < SECONDS * decoder_stretch, (result, decoder_stretch)
    assert max(result["growth"].values()) < GROWTH_MIB, result
    assert result["neighbour"] is not None, result
    status, seconds = result["neighbour"]
    assert status == 200 and seconds < NEIGHBOUR_SECONDS * stretch, (result, stretch)


def bytes_read(pid: int) -> int:
    """What a process has read through read()/recv() so far (its sockets included)."""
    with open(f"/proc/{pid}/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("rchar:"))


@pytest.mark.parametrize("name", ["multipart-9mb-filename", "png-1000-ztxt-bombs",
                                  "json-base64-of-whitespace"])
def test_a_body_whose_start_is_malformed_is_refused_unread(server, name):
    process, base = server
    hostile = next(case for case in cases() if case.name == name)
    before = bytes_read(process.pid)
    assert send_raw(base, hostile.request("127.0.0.1")) in (400, None)  # None: closed on it
    # Its first 256 KB, and what the socket had buffered by then: not megabytes.
    assert bytes_read(process.pid) - before < len(hostile.body) / 4


@pytest.mark.parametrize("form", ["raw", "multipart", "json"])
def test_large_honest_uploads_are_read_whole(server, form):
    _, base = server
    data = encode(draw_one(size=(1000, 1200), box=(450, 200, 550, 1000)), "BMP")  # 1.2 MB
    assert len(data) > 1_000_000
    if form == "raw":
        response = httpx.post(f"{base}/predict", content=data, timeout=30,
                              headers={"content-type": "image/bmp"})
    elif form == "multipart":
        response = httpx.post(f"{base}/predict", files=[("file", ("one.bmp", data))] * 2,
                              timeout=30)
    else:
        response = httpx.post(f"{base}/predict", timeout=30,
                              json={"images": [base64.b64encode(data).decode()]})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == (2 if form == "multipart" else 1)
    assert all("error" not in p and 0 <= p["digit"] <= 9 for p in predictions), predictions


def test_a_large_upload_that_waits_for_100_continue_gets_it(server):
    # curl sends "Expect: 100-continue" with uploads over 1 MB and waits (a second) for the
    # go-ahead; the server asks for the body as soon as the app wants to see its start.
    _, base = server
    data = encode(draw_one(size=(1000, 1200), box=(450, 200, 550, 1000)), "BMP")
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/bmp\r\n"
                     b"Expect: 100-continue\r\n"
                     + f"Content-Length: {len(data)}\r\n\r\n".encode())
        sock.settimeout(0.5)  # well under curl's own wait
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.settimeout(10)
        sock.sendall(data)
        assert sock.recv(100).startswith(b"HTTP/1.1 200 ")


def test_an_answer_before_100_continue_closes_the_connection(server):
    # Refused from its headers (over the 10 MB limit) before the client was asked for its
    # body: whatever it sends next could be that body or a new request, so no guessing.
    _, base = server
    host, port = base.removeprefix("http://").split(":")
    for content_type, length in (("image/png", 11_000_000), ("text/plain", 1_000_000)):
        with socket.create_connection((host, int(port)), timeout=3) as sock:
            sock.sendall(f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}"
                         f"\r\nExpect: 100-continue\r\nContent-Length: {length}\r\n\r\n"
                         .encode())
            answer = b""
            while chunk := sock.recv(65536):  # times out (fails) if the server keeps it open
                answer += chunk
        assert answer.startswith((b"HTTP/1.1 413 ", b"HTTP/1.1 415 ")), answer[:100]
        assert b"100 Continue" not in answer


def test_uploads_left_unfinished_give_their_memory_back(server):
    # 100 connections each send 900 KB of an honest-looking 5 MB upload and stop (reading
    # pauses at 256 KB until the start has been checked, then takes the rest); once they
    # close, what their bodies left in the heap goes back to the system.
    process, base = server
    host, port = base.removeprefix("http://").split(":")
    start = encode(draw_one(size=(1000, 1200)), "BMP")[:900_000]
    before = resident_mib(process.pid)
    held = []
    for _ in range(100):
        sock = socket.create_connection((host, int(port)), timeout=10)
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/bmp\r\n"
                     b"Content-Length: 5000000\r\n\r\n" + start)
        held.append(sock)
    time.sleep(1.0)
    during = resident_mib(process.pid)
    for sock in held:
        sock.close()
    time.sleep(2.5)  # the trim comes a second after the bodies are let go
    after = resident_mib(process.pid)
    assert during - before > 40, (before, during)  # they were held
    assert after - before < 25, (before, during, after)


def test_filenames_of_megabytes_leave_no_memory_behind(server):
    process, base = server
    before = resident_mib(process.pid)
    for i in range(12):
        body = multipart([((str(i) * 9_000_000)[:9_000_000] + ".png", digit_png())])
        try:
            response = httpx.post(f"{base}/predict", content=body, timeout=10, headers={
                "content-type": "multipart/form-data; boundary=hostileboundary"})
        except httpx.TransportError:
            continue  # refused from its start and closed before the client sent it all
        assert response.status_code == 400 and len(response.content) < 1000
    assert resident_mib(process.pid) - before < 50


def metric(base: str, route: str, status: str) -> float:
    prefix = f'digits_http_requests_total{{method="POST",route="{route}",status="{status}"}} '
    lines = [line for line in httpx.get(f"{base}/metrics").text.splitlines()
             if line.startswith(prefix)]
    return float(lines[0].split()[-1]) if lines else 0.0


def test_a_client_that_leaves_mid_upload_is_a_499_not_a_500(server):
    _, base = server
    host, port = base.removeprefix("http://").split(":")
    before = metric(base, "/predict", "499")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                     b"Content-Length: 100000\r\n\r\n" + b"\0" * 1000)
    deadline = time.monotonic() + 10
    while metric(base, "/predict", "499") == before:
        assert time.monotonic() < deadline, "the disconnect was never counted"
        time.sleep(0.05)
    assert metric(base, "/predict", "500") == 0


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_worker_killed_mid_image_costs_the_server_nothing(server):
    # A photo-sized image keeps a worker busy for a while; kill whichever worker is seen
    # working. Its request is answered 400, and the image is never decoded again here. On
    # a loaded machine the worker seen working may be a replacement still starting up, and
    # the image then decodes fine: up to three tries. There, too, the worker may overrun
    # its CPU limit before the kill: killed by the pool instead, a 413.
    from PIL import Image

    from tests.hostile.inputs import encode

    process, base = server
    photo = encode(Image.effect_noise((2500, 2500), 80).convert("RGB"), "PNG",
                   compress_level=1)
    assert len(photo) < 10_000_000
    for _ in range(3):
        answer, killed, server_cpu, restarts_added = kill_the_busy_worker(process, base, photo)
        if answer.status_code in (400, 413):
            break
    assert killed, "no worker was seen decoding the image"
    detail = answer.json()["detail"]
    assert ((answer.status_code == 400 and "crashed" in detail)
            or (answer.status_code == 413 and "of CPU" in detail)), answer.text
    # The server parsed and routed the request; decoding it would have taken seconds.
    assert server_cpu < 0.5
    assert restarts_added == 1
    neighbours: list = []
    neighbour(base, neighbours)
    assert neighbours[0][0] == 200
    assert len(decoder_processes(process.pid)) == 2


def kill_the_busy_worker(process, base: str, photo: bytes):
    workers = decoder_processes(process.pid)
    restarts_before = restarts(base)
    busy_before = {pid: cpu_seconds(pid) for pid in workers}
    server_before = cpu_seconds(process.pid)
    answers: list = []
    request = threading.Thread(target=lambda: answers.append(httpx.post(
        f"{base}/predict", content=photo, headers={"content-type": "image/png"}, timeout=60)))
    request.start()
    killed = None
    deadline = time.monotonic() + 20
    while killed is None and time.monotonic() < deadline and request.is_alive():
        for pid in workers:
            if cpu_seconds(pid) - busy_before[pid] > 0.03:
                os.kill(pid, signal.SIGKILL)
                killed = pid
                break
        time.sleep(0.002)
    request.join(timeout=60)
    return (answers[0], killed, cpu_seconds(process.pid) - server_before,
            restarts(base) - restarts_before)


def restarts(base: str) -> float:
    prefix = 'digits_decoder_restarts_total{reason="crashed"} '
    lines = [line for line in httpx.get(f"{base}/metrics").text.splitlines()
             if line.startswith(prefix)]
    return float(lines[0].split()[-1]) if lines else 0.0
