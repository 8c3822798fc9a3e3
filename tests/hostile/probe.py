"""Sending one hostile request to a running server and measuring what it cost."""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import threading
import time

import httpx

from tests.hostile.inputs import Hostile, digit_png
from tests.servers import decoder_processes, resident_mib, status_mib


def slowdown(cpu_seconds: float = 0.2, niceness: int = 0) -> float:
    """How many times longer than its CPU time a busy loop at `niceness` takes here now: 1
    on a quiet machine, more when other work holds the cores (time limits stretch by it).
    The decoder processes run at nice 10, and are slowed far more than the server."""
    probe = (f"import os, time; os.nice({niceness}); "
             "w, c = time.perf_counter(), time.process_time()\n"
             f"while time.process_time() - c < {cpu_seconds}: pass\n"
             "print((time.perf_counter() - w) / (time.process_time() - c))")
    ratio = float(subprocess.run([sys.executable, "-c", probe], capture_output=True,
                                 text=True, check=True).stdout)
    return max(1.0, ratio)


def send_raw(base: str, data: bytes, timeout: float = 10) -> int | None:
    """Send one request's exact bytes; its status, or None if the server closed on it."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the whole body was read; the answer may still be there
        response = http.client.HTTPResponse(sock)
        try:
            response.begin()
            response.read()
        except (http.client.HTTPException, ConnectionError, TimeoutError):
            return None
        return response.status


class Peaks:
    """Peak resident memory of the server and its decoder workers during a request."""

    def __init__(self, server_pid: int):
        self.pids = [server_pid, *decoder_processes(server_pid)]
        self.before = {}
        for pid in self.pids:
            with open(f"/proc/{pid}/clear_refs", "w") as clear:
                clear.write("5")  # reset VmHWM to the current RSS
            self.before[pid] = resident_mib(pid)

    def growth(self) -> dict[int, float]:
        """MiB each process grew at its peak (replaced workers are gone: not counted)."""
        grown = {}
        for pid, before in self.before.items():
            try:
                grown[pid] = status_mib(pid, "VmHWM") - before
            except FileNotFoundError:
                continue
        return grown


def neighbour(base: str, answers: list) -> None:
    started = time.monotonic()
    response = httpx.post(f"{base}/predict", content=digit_png(),
                          headers={"content-type": "image/png"}, timeout=10)
    answers.append((response.status_code, time.monotonic() - started))


def attack(server, hostile: Hostile) -> dict:
    process, base = server
    peaks = Peaks(process.pid)
    neighbours: list = []
    helper = threading.Thread(target=lambda: (time.sleep(0.02), neighbour(base, neighbours)))
    helper.start()
    started = time.monotonic()
    status = send_raw(base, hostile.request("127.0.0.1"))
    elapsed = time.monotonic() - started
    helper.join(timeout=30)
    return {"status": status, "seconds": elapsed, "growth": peaks.growth(),
            "neighbour": neighbours[0] if neighbours else None}
