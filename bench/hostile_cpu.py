"""What each hostile input costs the server process in CPU: `python -m bench.hostile_cpu`.

Starts `python -m app` (one server process, default limits), sends each input of
`tests/hostile/inputs.py` once to warm up and then `--repeat` times in a row, each on a
new connection, and prints the server process's CPU time (user + system, from /proc) and
the wall time per request. Decoder processes are not counted: this is the cost that
competes with valid requests at the same priority (the soak's tail).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time

from bench.run import REPO, server
from tests.hostile.inputs import cases


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def send(port: int, request: bytes) -> str:
    """Send one request's bytes; the status line's code, or "closed"."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        try:
            sock.sendall(request)
            head = b""
            while b"\r\n" not in head and (chunk := sock.recv(4096)):
                head += chunk
        except OSError:
            return "closed"
    return head.split(b" ", 2)[1].decode() if head.startswith(b"HTTP/") else "closed"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hostile_cpu", description=__doc__)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    with server([sys.executable, "-m", "app", "--port", "{port}"], "/readyz",
                env={"DIGITS_LOG_LEVEL": "error", "DIGITS_ACCESS_LOG": "false"}) as (
            base, process, _):
        port = int(base.rsplit(":", 1)[1])
        print("| input | MB | answer | server CPU ms | wall ms |")
        print("|---|---:|---:|---:|---:|")
        for case in cases():
            request = case.request(f"127.0.0.1:{port}")
            send(port, request)
            cpu, started = cpu_seconds(process.pid), time.perf_counter()
            answers = {send(port, request) for _ in range(args.repeat)}
            wall = (time.perf_counter() - started) / args.repeat
            cpu = (cpu_seconds(process.pid) - cpu) / args.repeat
            print(f"| {case.name} | {len(request) / 1e6:.2f} | {', '.join(sorted(answers))} | "
                  f"{cpu * 1000:.1f} | {wall * 1000:.1f} |", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
