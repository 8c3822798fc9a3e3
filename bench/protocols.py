"""`python -m bench.protocols`: the standard protocols against `/predict`, load generator
by load generator, in alternating rounds on one server (`python -m app`, one process per
core, gRPC on).

Each round measures at 32 connections: `/predict` with a single-digit multipart upload
driven by `wrk`; the same digit as one binary FP32 tensor to OIP v2 HTTP, also driven by
`wrk`; and OIP v2 HTTP and gRPC driven by Triton's `perf_analyzer`, with the CPU it spends
on itself (cores: its CPU time over its wall time). It separates what the adapters cost
from what the load generator costs: both share this machine's cores with the server.
Writes bench/results/protocols-<date>.md.

    python -m bench.protocols [--rounds 3] [--seconds 6]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys

import numpy as np

from bench import perf_analyzer
from bench.run import (
    MODEL,
    REPO,
    WORKERS,
    free_port,
    multipart,
    png,
    sample_digits,
    server,
    wrk,
)


def oip_body(digit: np.ndarray) -> tuple[bytes, int]:
    """One digit as an OIP v2 binary request: its JSON header's length, and the body."""
    head = json.dumps({"inputs": [{"name": "image", "shape": [1, 28, 28, 1], "datatype": "FP32",
                                   "parameters": {"binary_data_size": 3136}}],
                       "outputs": [{"name": "output_0", "parameters": {"binary_data": True}}]})
    tensor = (digit.astype(np.float32) / 255).astype("<f4").tobytes()
    return head.encode() + tensor, len(head.encode())


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.protocols", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=6)
    args = parser.parse_args()
    digits = sample_digits(64)
    single = multipart([png(digits[0])])
    body, head_length = oip_body(digits[0])
    grpc_port = free_port()
    rows = []
    with server([sys.executable, "-m", "app", "--port", "{port}", "--workers", str(WORKERS)],
                "/readyz", env={"DIGITS_LOG_LEVEL": "warning",
                                "DIGITS_GRPC_PORT": str(grpc_port)},
                processes=WORKERS) as (base, _, _):
        wrk(base + "/predict", single, 32, 2)
        for round_ in range(1, args.rounds + 1):
            row = {"round": round_,
                   "predict_wrk": wrk(base + "/predict", single, 32, args.seconds),
                   "oip_http_wrk": wrk(f"{base}/v2/models/{MODEL}/infer", body, 32,
                                       args.seconds, "application/octet-stream",
                                       f"Inference-Header-Content-Length: {head_length}")}
            for protocol, url in [("http", base.removeprefix("http://")),
                                  ("grpc", f"127.0.0.1:{grpc_port}")]:
                row[f"oip_{protocol}_perf_analyzer"] = perf_analyzer.measure(
                    url, protocol, MODEL, 32, args.seconds, digits)
            rows.append(row)
            print(json.dumps(row), flush=True)
    report = markdown(rows)
    out = REPO / "bench" / "results" / f"protocols-{dt.date.today().isoformat()}.md"
    out.write_text(report)
    print(report)


def markdown(rows: list[dict]) -> str:
    lines = ["# Standard protocols against /predict, by load generator", "",
             f"`python -m bench.protocols`: {WORKERS} server processes, c=32, requests/s "
             "(perf_analyzer: and the cores it used itself).", "",
             "| round | /predict, wrk | OIP v2 HTTP binary, wrk | OIP v2 HTTP, perf_analyzer "
             "| OIP v2 gRPC, perf_analyzer |", "|---:|---:|---:|---:|---:|"]
    for row in rows:
        http, grpc = row["oip_http_perf_analyzer"], row["oip_grpc_perf_analyzer"]
        lines.append(
            f"| {row['round']} | {row['predict_wrk']['requests_per_s']:,.0f} | "
            f"{row['oip_http_wrk']['requests_per_s']:,.0f} | "
            f"{http['requests_per_s']:,.0f} ({http.get('client_cores', 0):.2f} cores) | "
            f"{grpc['requests_per_s']:,.0f} ({grpc.get('client_cores', 0):.2f} cores) |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
