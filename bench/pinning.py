"""`python -m bench.pinning`: one server process per core, pinned to it or not.

Alternating rounds, each on a fresh `python -m app --workers <cores>` with gRPC on: 32
connections of single-digit `/predict` uploads (wrk), 8 of 64-digit uploads (wrk), then 32
of OIP v2 gRPC ModelInfer with FP32 tensors (Triton's perf_analyzer). Besides requests/s
it reports the server's own CPU time per request (its processes and their decoders, from
/proc), which the machine's drift moves far less than throughput, and the cores
perf_analyzer spent on itself.

    python -m bench.pinning [--rounds 3] [--seconds 6]
"""

from __future__ import annotations

import argparse
import sys

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

VARIANTS = {"pinned": "true", "unpinned": "false"}


def measure(pinned: str, seconds: int, digits, single: bytes, batch: bytes) -> dict:
    grpc_port = free_port()
    with server([sys.executable, "-m", "app", "--port", "{port}", "--workers", str(WORKERS)],
                "/readyz", env={"DIGITS_LOG_LEVEL": "warning", "DIGITS_PIN_PROCESSES": pinned,
                                "DIGITS_GRPC_PORT": str(grpc_port)},
                processes=WORKERS) as (base, process, _):
        wrk(base + "/predict", single, 32, 2)
        native = with_server_cpu(process.pid, lambda: wrk(base + "/predict", single, 32,
                                                          seconds))
        batches = wrk(base + "/predict", batch, 8, seconds)
        grpc = with_server_cpu(process.pid, lambda: perf_analyzer.measure(
            f"127.0.0.1:{grpc_port}", "grpc", MODEL, 32, seconds, digits))
    return {"predict_per_s": native["requests_per_s"],
            "predict_cpu_us": native["server_cpu_us"],
            "images_per_s_64": batches["requests_per_s"] * len(digits),
            "grpc_per_s": grpc["requests_per_s"],
            "grpc_cpu_us": grpc["server_cpu_us"] or float("nan"),
            "grpc_p99_ms": grpc["p99_ms"], "client_cores": grpc.get("client_cores", 0.0),
            # Why perf_analyzer gave no figure (most often: no stable throughput in its trials).
            "grpc_failure": grpc.get("output", "").strip().splitlines()[-1:]}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pinning", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=6)
    args = parser.parse_args()
    digits = sample_digits(64)
    single, batch = multipart([png(digits[0])]), multipart([png(d) for d in digits])
    print("| round | server processes | /predict req/s | server CPU µs/request | gRPC req/s | "
          "server CPU µs/call | gRPC p99 ms | perf_analyzer cores | gRPC / predict | "
          "64-image requests, c=8: images/s |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for round_ in range(1, args.rounds + 1):
        for name, value in VARIANTS.items():
            r = measure(value, args.seconds, digits, single, batch)
            print(f"| {round_} | {name} | {r['predict_per_s']:,.0f} | {r['predict_cpu_us']:.0f} | "
                  f"{r['grpc_per_s']:,.0f} | {r['grpc_cpu_us']:.0f} | {r['grpc_p99_ms']:.1f} | "
                  f"{r['client_cores']:.2f} | {r['grpc_per_s'] / r['predict_per_s']:.2f} | "
                  f"{r['images_per_s_64']:,.0f} |", flush=True)
            if r["grpc_failure"]:
                print(f"<!-- perf_analyzer failed: {r['grpc_failure'][0][:200]} -->", flush=True)


if __name__ == "__main__":
    main()
