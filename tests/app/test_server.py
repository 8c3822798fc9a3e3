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
from tests.servers import decoder_processes, resident_mib, start_server


def test_preprocessing_workers_do_not_load_tensorflow(tiny_model_dir):
    server, _ = start_server(tiny_model_dir, preprocess_workers=2)
    try:
        workers = decoder_processes(server.pid)
        assert len(workers) == 2
        # Nor does a CPU server itself (LiteRT runs the models: tests/app/test_registry.py).
        assert all("libtensorflow" not in open(f"/proc/{pid}/maps").read()
                   for pid in [server.pid, *workers])
        assert all(resident_mib(pid) < 150 for pid in workers)
    finally:
        server.terminate()
        server.wait(timeout=30)


def in_flight(base: str) -> float:
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith("digits_http_requests_in_flight "):
            return float(line.split()[1])
    raise AssertionError("no in-flight gauge")


def test_sigterm_lets_the_request_in_flight_finish(tiny_model_dir):
    # A long batch window keeps the first request in flight for seconds.
    server, base = start_server(tiny_model_dir, batch_timeout_ms=3000, preprocess_workers=0)
    try:
        answers = []
        request = threading.Thread(target=lambda: answers.append(httpx.post(
            f"{base}/predict", content=encode(draw_one()),
            headers={"content-type": "image/png"}, timeout=30)))
        request.start()
        deadline = time.monotonic() + 30
        while in_flight(base) < 2:  # the prediction, and this /metrics request itself
            assert time.monotonic() < deadline, "the request never reached the server"
            time.sleep(0.01)
        server.send_signal(signal.SIGTERM)
        request.join(timeout=30)
        # uvicorn re-raises the signal once it has shut down cleanly, hence -SIGTERM.
        assert server.wait(timeout=30) in (0, -signal.SIGTERM)
        assert answers and answers[0].status_code == 200
        assert len(answers[0].json()["predictions"]) == 1
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


def tcp_sockets(port: int, state: str) -> dict[int, str]:
    """inode -> remote address of this machine's IPv4 TCP sockets on local `port` in `state`
    ("0A" listening, "01" established), from /proc/net/tcp."""
    found = {}
    for row in open("/proc/net/tcp").read().splitlines()[1:]:
        fields = row.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:
            found[int(fields[9])] = fields[2]
    return found


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def test_connections_opened_together_are_spread_over_the_processes(tiny_model_dir):
    # With one shared listening socket, one process used to accept all of them at once.
    server, base = start_server(tiny_model_dir, workers=2, preprocess_workers=0)
    port = int(base.rsplit(":", 1)[1])
    clients = []
    try:
        deadline = time.monotonic() + 60
        while len(tcp_sockets(port, "0A")) < 2:  # each process listens once it is ready
            assert time.monotonic() < deadline, "the second process never listened"
            time.sleep(0.1)
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(24)]
        for client in clients:
            client.sendall(b"GET /healthz HTTP/1.1\r\nhost: test\r\n\r\n")
        for client in clients:
            assert client.recv(4096).startswith(b"HTTP/1.1 200")
        processes = subprocess.run(["ps", "-o", "pid=", "--ppid", str(server.pid)],
                                   capture_output=True, text=True).stdout.split()
        accepted = tcp_sockets(port, "01")
        per_process = [len(socket_inodes(int(pid)) & accepted.keys()) for pid in processes]
        assert sum(per_process) == 24
        assert sorted(per_process)[-2] >= 1, per_process  # both processes took some
    finally:
        for client in clients:
            client.close()
        server.terminate()
        server.wait(timeout=30)


def test_several_processes_refuse_a_port_already_served(tiny_model_dir):
    # SO_REUSEPORT would otherwise let a second copy quietly share the first one's traffic.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "app", "--port", str(port),
                                 "--workers", "2", "--model-dir", str(tiny_model_dir)],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"already listening on 127.0.0.1:{port}" in result.stderr


def test_a_server_process_that_dies_is_replaced(tiny_model_dir):
    server, base = start_server(tiny_model_dir, workers=2, preprocess_workers=0)
    port = int(base.rsplit(":", 1)[1])
    try:
        def server_processes() -> set[int]:
            out = subprocess.run(["ps", "-ww", "-o", "pid=,args=", "--ppid", str(server.pid)],
                                 capture_output=True, text=True).stdout.splitlines()
            return {int(line.split()[0]) for line in out if "spawn_main" in line}

        deadline = time.monotonic() + 60
        while len(tcp_sockets(port, "0A")) < 2:
            assert time.monotonic() < deadline, "the second process never listened"
            time.sleep(0.1)
        first = server_processes()
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        while not (len(tcp_sockets(port, "0A")) == 2 and victim not in server_processes()
                   and len(server_processes()) >= 2):
            assert time.monotonic() < deadline + 60, "no replacement started listening"
            time.sleep(0.1)
        assert httpx.get(f"{base}/readyz").status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_request_still_running_when_the_grace_period_ends_gets_503(tiny_model_dir):
    # Its body never arrives in full, so it is still running when the 1 s grace ends.
    server, base = start_server(tiny_model_dir, graceful_shutdown_s=1, preprocess_workers=0)
    host, port = base.removeprefix("http://").split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=60) as sock:
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                         b"Content-Length: 1000\r\n\r\n" + b"\x89PNG" * 4)
            deadline = time.monotonic() + 30
            while in_flight(base) < 2:  # that request, and this /metrics request itself
                assert time.monotonic() < deadline, "the request never reached the app"
                time.sleep(0.01)
            server.send_signal(signal.SIGTERM)
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        assert b"retry-after: 1" in answer.lower()
        assert server.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if server.poll() is None:
            server.kill()
