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


def test_sigterm_lets_the_request_in_flight_finish(tiny_model_dir):
    port = free_port()
    # A long batch window keeps the request in flight for a second, deterministically.
    env = {**os.environ, "DIGITS_BATCH_TIMEOUT_MS": "1500", "DIGITS_PREPROCESS_WORKERS": "0",
           "DIGITS_LOG_LEVEL": "warning"}
    server = subprocess.Popen([sys.executable, "-m", "app", "--port", str(port),
                               "--model-dir", str(tiny_model_dir)], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None and time.monotonic() < deadline, "server did not start"
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
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
