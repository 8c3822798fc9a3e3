"""Real server processes for the tests that need one, and what /proc says about them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx


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


def status_mib(pid: int, field: str) -> float:
    """A memory figure of /proc/<pid>/status (VmRSS, VmHWM, ...) in MiB."""
    status = open(f"/proc/{pid}/status").read()
    return int(status.split(field + ":")[1].split()[0]) / 1024


def resident_mib(pid: int) -> float:
    return status_mib(pid, "VmRSS")


def children(pid: int) -> list[int]:
    return [int(child) for task in os.listdir(f"/proc/{pid}/task")
            for child in open(f"/proc/{pid}/task/{task}/children").read().split()]


def decoder_processes(server_pid: int) -> list[int]:
    """The decoder workers: the children of the server's multiprocessing fork server."""
    fork_servers = [pid for pid in children(server_pid)
                    if b"forkserver" in open(f"/proc/{pid}/cmdline", "rb").read()]
    assert len(fork_servers) == 1
    return children(fork_servers[0])
