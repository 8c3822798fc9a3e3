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


def cpu_seconds(pid: int, reaped_children: bool = False) -> float:
    """User + system CPU of a process (with `reaped_children`, also of its waited-for
    descendants); 0 if it is gone."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    ticks = sum(int(f) for f in fields[11:15 if reaped_children else 13])
    return ticks / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            children = open(f"/proc/{pid}/task/{task}/children").read().split()
        except FileNotFoundError:
            continue
        for child in map(int, children):
            found += [child, *descendants(child)]
    return found


def decoder_cpu_seconds(pid: int) -> float:
    """The CPU of the server's descendants, live or reaped (one dead but not yet reaped
    is missed: a replaced decoder's last moments)."""
    reaped = cpu_seconds(pid, reaped_children=True) - cpu_seconds(pid)
    return reaped + sum(cpu_seconds(child, reaped_children=True)
                        for child in descendants(pid))


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
        print("| input | MB | answer | server CPU ms | decoder CPU ms | wall ms |")
        print("|---|---:|---:|---:|---:|---:|")
        for case in cases():
            request = case.request(f"127.0.0.1:{port}")
            send(port, request)
            time.sleep(0.5)  # a replaced decoder's start-up belongs to the warm-up
            cpu, decoders = cpu_seconds(process.pid), decoder_cpu_seconds(process.pid)
            started = time.perf_counter()
            answers = {send(port, request) for _ in range(args.repeat)}
            wall = (time.perf_counter() - started) / args.repeat
            time.sleep(0.5)
            cpu = (cpu_seconds(process.pid) - cpu) / args.repeat
            decoders = (decoder_cpu_seconds(process.pid) - decoders) / args.repeat
            print(f"| {case.name} | {len(request) / 1e6:.2f} | {', '.join(sorted(answers))} | "
                  f"{cpu * 1000:.1f} | {decoders * 1000:.1f} | {wall * 1000:.1f} |", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
