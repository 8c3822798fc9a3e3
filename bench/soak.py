"""`make soak`: a minute of load in which one request in twenty is hostile.

Two runs against the same `python -m app` (as `make bench` serves it, a process per core):
a clean one, then one where each request is drawn from `tests/hostile/inputs.py` with
probability 5%. Valid requests are single held-out MNIST digits as multipart PNGs. The
load comes from 64 keep-alive connections of a small asyncio HTTP/1.1 client (a closed
loop: each connection sends its next request when the last is answered).

    python -m bench.soak [--seconds 60] [--clients 64] [--hostile 0.05] [--out bench/results]
    python -m bench.soak --only json-base64-of-whitespace --seconds 15   # one input's share

Targets: valid requests' p99 within 2x the clean run's, no valid request failed, and the
service's memory (all its processes) at the end within 10% of what it was at the start of
the hostile run. Writes bench/results/soak-<date>.md and .json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import multiprocessing
import random
import sys
import time
from pathlib import Path

import numpy as np
import uvloop

from bench.run import REPO, WORKERS, multipart, png, rss_mb, sample_digits, server
from tests.hostile.inputs import cases

HOST = "127.0.0.1"


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """(status, whether the connection stays open) of one response; its body is dropped."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":")
                                                            for line in lines[1:] if line)}
    await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers.get("connection", "").lower() != "close"


async def connection(port: int, pick, deadline: float, records: list) -> None:
    """One client: send, wait for the answer, record (kind, status, seconds), repeat."""
    reader = writer = None
    while time.perf_counter() < deadline:
        if writer is None:
            reader, writer = await asyncio.open_connection(HOST, port)
        kind, request = pick()
        started = time.perf_counter()
        try:
            writer.write(request)
            await writer.drain()
            status, keep_open = await asyncio.wait_for(read_response(reader), 30)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            status, keep_open = None, False  # a closed connection: fine for hostile ones
        records.append((kind, status, time.perf_counter() - started))
        if not keep_open:
            writer.close()
            writer = None
    if writer is not None:
        writer.close()


def load(port: int, seconds: float, clients: int, hostile_share: float,
         valid: list[bytes], hostile: list[tuple[str, bytes]], seed: int,
         processes: int = 1) -> list:
    """The records of `clients` connections, spread over `processes` client processes."""
    if processes == 1:
        return load_here(port, seconds, clients, hostile_share, valid, hostile, seed)
    shares = [clients // processes + (i < clients % processes) for i in range(processes)]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        parts = pool.starmap(load_here, [(port, seconds, share, hostile_share, valid, hostile,
                                          seed * 1000 + i) for i, share in enumerate(shares)])
    return [record for part in parts for record in part]


def load_here(port: int, seconds: float, clients: int, hostile_share: float,
              valid: list[bytes], hostile: list[tuple[str, bytes]], seed: int) -> list:
    rng = random.Random(seed)

    def pick() -> tuple[str, bytes]:
        if hostile and rng.random() < hostile_share:
            return rng.choice(hostile)
        return "valid", rng.choice(valid)

    async def run() -> list:
        records: list = []
        deadline = time.perf_counter() + seconds
        await asyncio.gather(*(connection(port, pick, deadline, records)
                               for _ in range(clients)))
        return records

    # uvloop (installed with uvicorn) keeps the client's own overhead, which shares these
    # cores with the service, low; multi-megabyte writes are copied in C.
    cpu = time.process_time()
    records = uvloop.run(run())
    # The load generator's own share of a core: near 1.0 it, not the service, sets the pace.
    records.append(("client", time.process_time() - cpu, seconds))
    return records


def summarise(records: list, seconds: float) -> dict:
    client_cpu = sum(r[1] for r in records if r[0] == "client")
    records = [r for r in records if r[0] != "client"]
    valid = np.array([s for kind, _, s in records if kind == "valid"]) * 1000
    valid_failed = sum(1 for kind, status, _ in records if kind == "valid" and status != 200)
    hostile = [(kind, status, s) for kind, status, s in records if kind != "valid"]
    by_status: dict[str, int] = {}
    for _, status, _ in hostile:
        by_status[str(status)] = by_status.get(str(status), 0) + 1
    return {
        "valid_requests": len(valid), "valid_failed": valid_failed,
        "valid_per_s": len(valid) / seconds,
        "valid_p50_ms": float(np.percentile(valid, 50)),
        "valid_p99_ms": float(np.percentile(valid, 99)),
        "hostile_requests": len(hostile), "hostile_statuses": by_status,
        # 503 is load shedding (a busy decoder or a full queue, with Retry-After), not a fault.
        "hostile_5xx": sum(n for status, n in by_status.items()
                           if status.startswith("5") and status != "503"),
        "hostile_max_s": max((s for _, _, s in hostile), default=0.0),
        "client_cpu_share": client_cpu / seconds,  # of one core, all client processes
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--hostile", type=float, default=0.05)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--client-processes", type=int, default=1,
                        help="spread the connections over this many client processes")
    parser.add_argument("--only", nargs="+", metavar="INPUT",
                        help="draw the hostile requests from these inputs only (a diagnosis: "
                             "which of them costs valid requests their latency)")
    args = parser.parse_args()

    host = f"{HOST}:0"
    valid = [multipart([png(digit)]) for digit in sample_digits(256)]
    valid = [b"POST /predict HTTP/1.1\r\nHost: " + host.encode()
             + b"\r\nContent-Type: multipart/form-data; boundary=digit-bench-boundary\r\n"
             + f"Content-Length: {len(body)}\r\n\r\n".encode() + body for body in valid]
    print("generating the hostile requests…", flush=True)
    hostile = [(case.name, case.request(host)) for case in cases()
               if not args.only or case.name in args.only]
    if not hostile:
        parser.error(f"no hostile input named {args.only}")
    result: dict = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "seconds": args.seconds, "clients": args.clients,
                    "hostile_share": args.hostile, "server_processes": WORKERS,
                    "client_processes": args.client_processes,
                    "hostile_inputs": sorted({name for name, _ in hostile})}
    with server([sys.executable, "-m", "app", "--port", "{port}", "--workers", str(WORKERS)],
                "/readyz", env={"DIGITS_LOG_LEVEL": "error", "DIGITS_ACCESS_LOG": "false"},
                processes=WORKERS) as (base, process, _):
        port = int(base.rsplit(":", 1)[1])
        load(port, 5, args.clients, 0, valid, [], seed=0)  # warm up
        print("clean run…", flush=True)
        result["clean"] = summarise(load(port, args.seconds, args.clients, 0, valid, [], 1,
                                         args.client_processes), args.seconds)
        result["rss_mb_start"] = rss_mb(process.pid)
        print("hostile run…", flush=True)
        result["hostile"] = summarise(load(port, args.seconds, args.clients, args.hostile,
                                           valid, hostile, 2, args.client_processes),
                                      args.seconds)
        time.sleep(2)  # let the last replaced decoder start
        result["rss_mb_end"] = rss_mb(process.pid)
    result["targets"] = targets(result)
    print(report(result))
    if not args.only:  # a diagnosis is printed, never filed as the soak's result
        write(result, args.out)


def targets(r: dict) -> list[dict]:
    rows = [
        ("valid p99, hostile run / clean run", r["hostile"]["valid_p99_ms"]
         / r["clean"]["valid_p99_ms"], 2.0),
        ("valid requests failed", r["hostile"]["valid_failed"] + r["clean"]["valid_failed"], 0),
        ("memory at the end / at the start", r["rss_mb_end"] / r["rss_mb_start"], 1.10),
        ("hostile requests answered 5xx other than 503", r["hostile"]["hostile_5xx"], 0),
    ]
    return [{"target": name, "measured": value, "goal": goal, "met": value <= goal}
            for name, value, goal in rows]


def write(r: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"soak-{r['date'][:10]}"
    stem.with_suffix(".json").write_text(json.dumps(r, indent=2) + "\n")
    stem.with_suffix(".md").write_text(report(r))


def report(r: dict) -> str:
    clean, hostile = r["clean"], r["hostile"]
    lines = [
        f"# Soak {r['date']}", "",
        f"{r['seconds']:.0f} s per run at {r['clients']} keep-alive connections (from "
        f"{r.get('client_processes', 1)} client process(es)) against "
        f"`python -m app --workers {r['server_processes']}`; in the hostile run each request "
        f"is one of the {len(r['hostile_inputs'])} hostile inputs of `tests/hostile/inputs.py` "
        f"with probability {r['hostile_share']:.0%}. Reproduce: `make soak`.", "",
        "| run | valid req/s | valid p50 ms | valid p99 ms | valid failed | hostile sent | "
        "hostile answers | slowest hostile s | client CPU |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for name, m in (("clean", clean), ("5% hostile", hostile)):
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(m["hostile_statuses"].items()))
        lines.append(f"| {name} | {m['valid_per_s']:,.0f} | {m['valid_p50_ms']:.2f} | "
                     f"{m['valid_p99_ms']:.2f} | {m['valid_failed']} | {m['hostile_requests']} | "
                     f"{statuses or '-'} | {m['hostile_max_s']:.2f} | "
                     f"{m.get('client_cpu_share', float('nan')):.0%} |")
    lines += ["", f"Memory of the service's processes: {r['rss_mb_start']:.0f} MiB at the start "
              f"of the hostile run, {r['rss_mb_end']:.0f} MiB at its end.", "",
              "| target | measured | goal | met |", "|---|---:|---:|:---:|"]
    for t in r["targets"]:
        lines.append(f"| {t['target']} | {t['measured']:.2f} | at most {t['goal']} | "
                     f"{'yes' if t['met'] else 'NO'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
