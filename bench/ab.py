"""Two checkouts of the service, measured in alternation: `python -m bench.ab OLD NEW`.

Each round starts `python -m app --workers <cores>` from each checkout in turn (with this
environment's Python) and drives it with wrk at 32 connections for 8 s of single-image
multipart uploads, after a 2 s warm-up (`--images 64 --connections 8`: make bench's
64-image row instead). Alternating rounds keep the machine's drift out of the
comparison. Prints each checkout's req/s (and images/s) per round.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import bench.run as bench_run
from bench.run import WORKERS, multipart, png, sample_digits, server, wrk


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__)
    parser.add_argument("checkouts", nargs=2, type=Path, help="OLD and NEW repository roots")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=1, help="digits per request")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    body = multipart([png(digit) for digit in sample_digits(args.images)])
    rates: dict[Path, list[int]] = {checkout: [] for checkout in args.checkouts}
    for _ in range(args.rounds):
        for checkout in args.checkouts:
            bench_run.REPO = checkout.resolve()  # where `server` starts the command
            with server([sys.executable, "-m", "app", "--port", "{port}", "--workers",
                         str(WORKERS)], "/readyz", env={"DIGITS_LOG_LEVEL": "warning"},
                        processes=WORKERS) as (base, _, _):
                wrk(base + "/predict", body, args.connections, 2)
                rates[checkout].append(round(wrk(base + "/predict", body, args.connections, 8)
                                             ["requests_per_s"]))
            images = [rate * args.images for rate in rates[checkout]]
            print(f"{checkout}: {rates[checkout]} req/s ({images} images/s) at "
                  f"c={args.connections}, {args.images} image(s) per request", flush=True)


if __name__ == "__main__":
    main()
