"""Two checkouts of the service, measured in alternation: `python -m bench.ab OLD NEW`.

Each round starts `python -m app --workers <cores>` from each checkout in turn (with this
environment's Python) and drives it for 8 s after a 2 s warm-up: by default with wrk at 32
connections of single-image multipart uploads to `/predict` (`--images 64 --connections
8`: make bench's 64-image row instead); with `--protocol oip-grpc` or `oip-http`, with
Triton's perf_analyzer sending one FP32 tensor per request, as make bench's protocol rows
do. Alternating rounds keep the machine's drift out of the comparison. Prints each
checkout's req/s (and images/s) per round, and the CPU the server's processes spent per
request, which drifts less than throughput.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import bench.run as bench_run
from bench import perf_analyzer
from bench.run import (
    MODEL,
    WORKERS,
    free_port,
    multipart,
    png,
    sample_digits,
    server,
    with_server_cpu,
    wrk,
)

PROTOCOLS = ("predict", "oip-grpc", "oip-http")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__)
    parser.add_argument("checkouts", nargs=2, type=Path, help="OLD and NEW repository roots")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=1, help="digits per request")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--protocol", choices=PROTOCOLS, default="predict")
    args = parser.parse_args()
    digits = sample_digits(64 if args.protocol != "predict" else args.images)
    body = multipart([png(digit) for digit in digits[:args.images]])
    # By position, not path: the same checkout twice (A/A) shows the machine's noise.
    rates: list[list[int]] = [[], []]
    costs: list[list[int]] = [[], []]
    for _ in range(args.rounds):
        for side, checkout in enumerate(args.checkouts):
            bench_run.REPO = checkout.resolve()  # where `server` starts the command
            grpc_port = free_port()
            with server([sys.executable, "-m", "app", "--port", "{port}", "--workers",
                         str(WORKERS)], "/readyz",
                        env={"DIGITS_LOG_LEVEL": "warning", "DIGITS_GRPC_PORT": str(grpc_port)},
                        processes=WORKERS) as (base, process, _):
                drive(args, base, grpc_port, body, digits, 2)
                measured = with_server_cpu(process.pid, functools.partial(
                    drive, args, base, grpc_port, body, digits, 8))
                rates[side].append(round(measured["requests_per_s"]))
                costs[side].append(round(measured["server_cpu_us"] or 0))
            images = [rate * args.images for rate in rates[side]]
            print(f"{checkout}: {rates[side]} req/s ({images} images/s) at "
                  f"c={args.connections}, {args.protocol}, {args.images} image(s) per request; "
                  f"server CPU {costs[side]} µs per request", flush=True)


def drive(args, base: str, grpc_port: int, body: bytes, digits, seconds: int) -> dict:
    """One run of the chosen load against the server at `base` (its requests_per_s...)."""
    if args.protocol == "predict":
        return wrk(base + "/predict", body, args.connections, seconds)
    kind = args.protocol.removeprefix("oip-")
    url = f"127.0.0.1:{grpc_port}" if kind == "grpc" else base.removeprefix("http://")
    return perf_analyzer.measure(url, kind, MODEL, args.connections, seconds, digits)


if __name__ == "__main__":
    main()
