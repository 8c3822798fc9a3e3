"""`python -m app` as a real process: it serves, and SIGTERM lets in-flight requests finish."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx

from tests.images import draw_one, encode


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(model_dir, **settings) -> tuple[subprocess.Popen, str]:
    """`python -m app` on a free port, once it answers /readyz with 200."""
    port = free_port()
    env = {**os.environ, "DIGITS_LOG_LEVEL": "warning",
           **{f"DIGITS_{name.upper()}": str(value) for name, value in settings.items()}}
    server = subprocess.Popen([sys.executable, "-m", "app", "--port", str(port),
                               "--model-dir", str(model_dir)], env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise AssertionError("server did not start")
        try:
            if httpx.get(f"{base}/readyz").status_code == 200:
                return server, base
        except httpx.TransportError:
            time.sleep(0.1)


def resident_mib(pid: int) -> float:
    status = open(f"/proc/{pid}/status").read()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def test_preprocessing_workers_do_not_load_tensorflow(tiny_model_dir):
    server, _ = start_server(tiny_model_dir, preprocess_workers=2)
    try:
        children = subprocess.run(["ps", "-ww", "-o", "pid=,args=", "--ppid", str(server.pid)],
                                  capture_output=True, text=True).stdout.splitlines()
        workers = [int(line.split()[0]) for line in children if "spawn_main" in line]
        assert len(workers) == 2, children
        assert resident_mib(server.pid) > 300  # the server itself holds TensorFlow
        assert all(resident_mib(pid) < 150 for pid in workers)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_sigterm_lets_the_request_in_flight_finish(tiny_model_dir):
    # A long batch window keeps the request in flight for a second, deterministically.
    server, base = start_server(tiny_model_dir, batch_timeout_ms=1500, preprocess_workers=0)
    try:
        answers = []
        request = threading.Thread(target=lambda: answers.append(httpx.post(
            f"{base}/predict", content=encode(draw_one()),
            headers={"content-type": "image/png"}, timeout=30)))
        started = time.monotonic()
        request.start()
        time.sleep(0.5)
        server.send_signal(signal.SIGTERM)
        request.join(timeout=30)
        # uvicorn re-raises the signal once it has shut down cleanly, hence -SIGTERM.
        assert server.wait(timeout=30) in (0, -signal.SIGTERM)
        assert answers and answers[0].status_code == 200
        assert len(answers[0].json()["predictions"]) == 1
        assert time.monotonic() - started >= 1.4  # it really was in flight at SIGTERM
    finally:
        if server.poll() is None:
            server.kill()


def test_several_worker_processes_serve(tiny_model_dir):
    server, base = start_server(tiny_model_dir, workers=2, preprocess_workers=0)
    try:
        for _ in range(4):
            response = httpx.post(f"{base}/predict", content=encode(draw_one()),
                                  headers={"content-type": "image/png"}, timeout=30)
            assert response.status_code == 200
        workers = subprocess.run(["ps", "-ww", "-o", "pid=", "--ppid", str(server.pid)],
                                 capture_output=True, text=True).stdout.split()
        assert len(workers) >= 2
    finally:
        server.terminate()
        server.wait(timeout=30)
