"""`make bench`: the service against the raw model, the HTTP floor and a naive service.

Everything is measured in one run on this machine, one server under load at a time, with
`wrk` as the load generator on loopback (and Triton's perf_analyzer for the standard
protocols). This machine's speed drifts within minutes, so each ratio's two sides are
measured next to each other: the floor and the raw ceiling right before and after the row
they are compared with, `/predict` around the protocols' rows. Every row of the service also
gets the CPU its processes spent per request (from /proc), and the raw model its CPU per
image: costs that the drift moves far less than throughput. Writes
bench/results/<date>.md, .json and .png.

    python -m bench.run [--seconds 10] [--out bench/results]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from app.settings import Settings
from bench import perf_analyzer
from digit_contract import list_versions
from scripts.realworld_images import encode

REPO = Path(__file__).resolve().parent.parent
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist-train.npz"
BOUNDARY = "digit-bench-boundary"
CONCURRENCY = (1, 8, 32, 64)
# Server processes for the service and the floor alike: one per core of this machine.
WORKERS = os.cpu_count() or 1
# What `POST /predict` serves: every service row, the raw ceiling and the protocol rows use
# this model, so each comparison is between ways of serving the same network.
MODEL = Settings().default_model.value
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
UVICORN_FAST = ["--loop", "uvloop", "--http", "httptools", "--no-access-log",
                "--log-level", "warning"]


# --- request bodies -----------------------------------------------------------------------

def sample_digits(count: int) -> np.ndarray:
    """Held-out MNIST digits when the shared data is here, else simple drawn strokes."""
    path = Path(os.environ.get("DIGITS_MNIST", SHARED_MNIST))
    if path.is_file():
        with np.load(path) as data:
            return data["x_train"][-count:]
    digits = np.zeros((count, 28, 28), dtype=np.uint8)
    digits[:, 4:24, 13:16] = 255
    return digits


def png(pixels: np.ndarray) -> bytes:
    return encode(Image.fromarray(pixels))


def multipart(images: list[bytes]) -> bytes:
    parts = [f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
             f'filename="{i}.png"\r\nContent-Type: image/png\r\n\r\n'.encode() + data + b"\r\n"
             for i, data in enumerate(images)]
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


# --- servers and load ---------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except Exception:  # noqa: BLE001 - not up yet
        return None


def listening_sockets(port: int) -> int:
    """How many sockets listen on `port` (one per server process with SO_REUSEPORT)."""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for row in rows
               if int(row.split()[1].rsplit(":", 1)[1], 16) == port and row.split()[3] == "0A")


@contextlib.contextmanager
def server(command: list[str], ready_path: str, env: dict | None = None, log: Path | None = None,
           processes: int = 1):
    """Start a server on a free 127.0.0.1 port; yield (base url, process, seconds to ready).

    Ready means `ready_path` answers 200 and all `processes` listen: a process that is
    still loading would otherwise miss the first run's connections.
    """
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [arg.replace("{port}", str(port)) for arg in command]
    log_file = open(log or os.devnull, "ab")  # noqa: SIM115 - closed below
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, **(env or {})},
                               stdout=log_file, stderr=subprocess.STDOUT)
    try:
        while (http_status(base + ready_path) != 200
               or listening_sockets(port) < processes):
            if process.poll() is not None:
                raise RuntimeError(f"{command} exited with {process.returncode}; see {log}")
            if time.perf_counter() - started > 180:
                raise RuntimeError(f"{command} not ready after 180 s")
            time.sleep(0.05)
        yield base, process, time.perf_counter() - started
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log_file.close()


def wrk(url: str, body: bytes, connections: int, seconds: int,
        content_type: str = f"multipart/form-data; boundary={BOUNDARY}",
        header: str = "") -> dict:
    """Drive `url` with wrk (one thread) and parse its report; `header`: one more header,
    "Name: value"."""
    with tempfile.NamedTemporaryFile(suffix=".body") as body_file:
        body_file.write(body)
        body_file.flush()
        env = {**os.environ, "BODY_FILE": body_file.name, "BODY_TYPE": content_type,
               "EXTRA_HEADER": header}
        command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout",
                   "10s", "-s", str(REPO / "bench" / "post.lua"), url]
        before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
        report = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
        after, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic() - started
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {**parse_wrk(report), "client_cores": round(cpu / wall, 2)}


def parse_wrk(report: str) -> dict:
    def milliseconds(value: str) -> float:
        number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()
        return float(number) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]

    percentiles = dict(re.findall(r"^\s+(50|99)(?:\.000)?%\s+(\S+)", report, re.MULTILINE))
    requests = int(re.search(r"(\d+) requests in", report).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", report)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                        report)
    errors = (int(non_2xx.group(1)) if non_2xx else 0) + (
        sum(int(n) for n in sockets.groups()) if sockets else 0)
    return {"requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", report).group(1)),
            "p50_ms": milliseconds(percentiles["50"]), "p99_ms": milliseconds(percentiles["99"]),
            "requests": requests, "errors": errors}


def rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (server workers, decoders)."""
    children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                              text=True).stdout.split()
    status = Path(f"/proc/{pid}/status").read_text()
    own = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024
    return own + sum(rss_mb(int(child)) for child in children)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process and all its descendants, alive now."""
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except FileNotFoundError:  # gone meanwhile
            continue
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        pending += [int(child) for child in children]
    return total


def with_server_cpu(pid: int, measure: Callable[[], dict]) -> dict:
    """`measure()`'s result with the CPU the server (`pid`, its processes and decoders)
    spent meanwhile: cores busy, and µs per request, which this machine's drift moves far
    less than throughput (a run perf_analyzer could not measure has no rate: None)."""
    before, started = cpu_seconds(pid), time.monotonic()
    measured = measure()
    cores = (cpu_seconds(pid) - before) / (time.monotonic() - started)
    rate = measured["requests_per_s"]
    return {**measured, "server_cores": round(cores, 2),
            "server_cpu_us": round(cores / rate * 1e6, 1) if rate else None}



# --- the measurements ---------------------------------------------------------------------

def raw_ceiling(model_path: Path, digits: np.ndarray, seconds: float,
                batch_sizes: tuple[int, ...] = (1, 128)) -> dict:
    """The model as the service runs it (LiteRT on CPU where the version has its file),
    in-process, with every core: images/s at each batch size (`seconds` for each)."""
    from app.runtimes import Runtime, choose, load

    runtime = choose(Runtime.auto, "/CPU:0", model_path)
    run, _keep = load(runtime, model_path, "/CPU:0", os.cpu_count() or 1)
    results: dict = {"runtime": runtime.value}
    for batch_size in batch_sizes:
        batch = np.resize(digits, (batch_size, 28, 28, 1)).astype(np.float32) / 255
        run(batch)
        calls, started, cpu = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - started < seconds:
            run(batch)
            calls += 1
        results[f"batch_{batch_size}_images_per_s"] = calls * batch_size / (
            time.perf_counter() - started)
        # The model's threads are this process's: its CPU time is the model's.
        results[f"batch_{batch_size}_cpu_us_per_image"] = (
            (time.process_time() - cpu) / (calls * batch_size) * 1e6)
    return results


def run(seconds: int, out_dir: Path) -> dict:
    python = sys.executable
    digits = sample_digits(64)
    single, batch64 = multipart([png(digits[0])]), multipart([png(d) for d in digits])
    logs = Path(tempfile.mkdtemp(prefix="digits-bench-"))
    results: dict = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                     "cpus": os.cpu_count(), "workers": WORKERS, "seconds_per_run": seconds}

    print("raw model ceiling…", flush=True)
    version = max(list_versions(REPO / "models" / MODEL))
    model_dir = REPO / "models" / MODEL / str(version)
    results["model"] = f"{MODEL} v{version}"
    results["raw"] = raw_ceiling(model_dir, digits, seconds / 2)

    print("HTTP floor…", flush=True)
    # The floor stays up (idle) until the service has been measured: the service's c=32
    # row is compared with the floor measured right before and right after it.
    with server([python, "-m", "bench.floor_app", "--port", "{port}", "--workers", str(WORKERS)],
                "/docs", log=logs / "floor.log", processes=WORKERS) as (floor_base, _, _):
        wrk(floor_base + "/predict", single, 32, 2)
        results["floor"] = wrk(floor_base + "/predict", single, 32, seconds)
        results["floor_bare"] = wrk(floor_base + "/bare", single, 32, seconds)
        run_service(results, python, model_dir, seconds, digits, single, batch64, logs,
                    floor_base)
    results["targets"] = check_targets(results)
    write_report(results, out_dir)
    shutil.rmtree(logs, ignore_errors=True)
    return results


def run_service(results: dict, python: str, model_dir: Path, seconds: int,
                digits: np.ndarray, single: bytes, batch64: bytes, logs: Path,
                floor_base: str) -> None:
    """The naive service's row, then every digit-service row, into `results`."""
    print("naive model.predict service…", flush=True)
    with server([python, "-m", "uvicorn", "bench.naive_app:app", "--port", "{port}",
                 *UVICORN_FAST], "/docs", log=logs / "naive.log") as (base, _, _):
        wrk(base + "/predict", single, 32, 2)
        results["naive"] = wrk(base + "/predict", single, 32, seconds)

    print("digit-service…", flush=True)
    grpc_port = free_port()
    with server([python, "-m", "app", "--port", "{port}", "--workers", str(WORKERS)], "/readyz",
                env={"DIGITS_LOG_LEVEL": "warning", "DIGITS_GRPC_PORT": str(grpc_port)},
                log=logs / "service.log", processes=WORKERS) as (base, process, cold):
        results["service_cold_start_s"] = cold
        results["service_rss_mb_ready"] = rss_mb(process.pid)
        wrk(base + "/predict", single, 32, 2)
        results["service"], results["floor_around_c32"] = {}, []
        for concurrency in CONCURRENCY:
            if concurrency == 32:
                results["floor_around_c32"].append(
                    wrk(floor_base + "/predict", single, 32, seconds))
            results["service"][concurrency] = with_server_cpu(process.pid, lambda c=concurrency: (
                wrk(base + "/predict", single, c, seconds)))
            if concurrency == 32:
                results["floor_around_c32"].append(
                    wrk(floor_base + "/predict", single, 32, seconds))
        # This machine's speed drifts by 10-20% within a minute, the model's and the
        # service's apart: the ceiling that the 64-image row is compared with is measured
        # right before and right after it (the service idle meanwhile), and their mean used.
        def ceiling() -> dict:
            return raw_ceiling(model_dir, digits, seconds / 2, (128,))

        around = [ceiling()]
        results["service_batch64"] = with_server_cpu(process.pid, lambda: (
            wrk(base + "/predict", batch64, 8, seconds)))
        around.append(ceiling())
        results["raw_around_batch64"] = [m["batch_128_images_per_s"] for m in around]
        results["raw_cpu_around_batch64"] = [m["batch_128_cpu_us_per_image"] for m in around]
        print("digit-service over Open Inference Protocol v2 (perf_analyzer)…", flush=True)
        results["oip_http"], results["oip_grpc"], results["predict_around_protocols"] = (
            protocol_rows(base, grpc_port, process.pid, single, seconds, digits))
        results["service_rss_mb_after"] = rss_mb(process.pid)


def protocol_rows(base: str, grpc_port: int, pid: int, single: bytes, seconds: int,
                  digits: np.ndarray) -> tuple[dict, dict, list[dict]]:
    """The standard protocols, driven by Triton's perf_analyzer (bench/perf_analyzer.py):
    FP32 [1, 28, 28, 1] tensors to the same server, at each concurrency. Their c=32 rows
    come first, between two runs of `/predict` at c=32, whose mean they are compared with:
    measured minutes apart, the two sides differed by this machine's drift as much as by
    their cost (0.69 to 1.12 for the same code on one evening)."""
    def oip(protocol: str, concurrency: int) -> dict:
        url = (base.removeprefix("http://") if protocol == "http"
               else f"127.0.0.1:{grpc_port}")
        return with_server_cpu(pid, lambda: perf_analyzer.measure(
            url, protocol, MODEL, concurrency, seconds, digits))

    def predict() -> dict:
        return with_server_cpu(pid, lambda: wrk(base + "/predict", single, 32, seconds))

    around = [predict()]
    at32 = {protocol: oip(protocol, 32) for protocol in ("http", "grpc")}
    around.append(predict())
    http, grpc = ({c: at32[protocol] if c == 32 else oip(protocol, c) for c in CONCURRENCY}
                  for protocol in ("http", "grpc"))
    return http, grpc, around


def _floor_at_32(r: dict) -> float:
    """The HTTP floor the service's c=32 row is compared with: the mean of the floor's runs
    around it (older results: the floor's one run, at the start)."""
    around = r.get("floor_around_c32") or [r["floor"]]
    return sum(m["requests_per_s"] for m in around) / len(around)


def _predict_at_32(r: dict) -> float:
    """/predict's c=32 rate the protocols are compared with: the mean of the runs around
    theirs (older results: the service's own c=32 row)."""
    around = r.get("predict_around_protocols") or [r["service"][32]]
    return sum(m["requests_per_s"] for m in around) / len(around)


def check_targets(r: dict) -> list[dict]:
    at32, at1, at64 = r["service"][32], r["service"][1], r["service"][64]
    batch_images = r["service_batch64"]["requests_per_s"] * 64
    protocols = [*r["oip_http"].values(), *r["oip_grpc"].values()]
    errors = (sum(m["errors"] for m in [*r["service"].values(), *protocols,
                                        *r.get("predict_around_protocols", []),
                                        *r.get("floor_around_c32", [])])
              + r["service_batch64"]["errors"])
    targets = [
        ("req/s at c=32 vs HTTP floor", at32["requests_per_s"] / _floor_at_32(r), 0.5, "ratio"),
        ("req/s at c=32 vs naive model.predict",
         at32["requests_per_s"] / r["naive"]["requests_per_s"], 50, "ratio"),
        ("p50 at c=1 (ms, at most)", at1["p50_ms"], 3.0, "max"),
        ("64-image requests vs raw batch-128 ceiling (images/s)",
         batch_images / ceiling_for_batch64(r), 0.4, "ratio"),
        ("p99 at c=64 (ms, at most)", at64["p99_ms"], 100.0, "max"),
        ("OIP v2 gRPC req/s at c=32 vs /predict at c=32",
         r["oip_grpc"][32]["requests_per_s"] / _predict_at_32(r), 1.0, "ratio"),
        ("OIP v2 HTTP req/s at c=32 vs /predict at c=32",
         r["oip_http"][32]["requests_per_s"] / _predict_at_32(r), 0.8, "ratio"),
        ("OIP v2 p99 at c=32, HTTP and gRPC (ms, at most)",
         max(_p99(r["oip_http"][32]), _p99(r["oip_grpc"][32])), 30.0, "max"),
        ("errors (at most)", errors, 0, "max"),
    ]
    return [{"target": name, "measured": value, "goal": goal,
             "met": value <= goal if kind == "max" else value >= goal}
            for name, value, goal, kind in targets]


def ceiling_for_batch64(r: dict) -> float:
    """The raw batch-128 ceiling measured around the 64-image row (older results: once,
    at the start of the run)."""
    around = r.get("raw_around_batch64") or [r["raw"]["batch_128_images_per_s"]]
    return sum(around) / len(around)


def _p99(measured: dict) -> float:
    # A run perf_analyzer could not measure has no p99: NaN fails the target.
    return math.nan if measured.get("unstable") else measured["p99_ms"]


# --- the report ---------------------------------------------------------------------------

def write_report(r: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / r["date"][:10]
    stem.with_suffix(".json").write_text(json.dumps(r, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(r))
    chart(r, stem.with_suffix(".png"))
    print(markdown(r))


def markdown(r: dict) -> str:
    rows = [("HTTP floor: FastAPI `UploadFile` endpoint, no work", 32, r["floor"]),
            ("(reference: raw body read, no form parsing)", 32, r["floor_bare"]),
            ("naive `model.predict` per request", 32, r["naive"]),
            *[("digit-service, 1 image/request", c, m) for c, m in r["service"].items()],
            ("digit-service, 64 images/request", 8, r["service_batch64"]),
            *[("OIP v2 HTTP, binary FP32 tensors (perf_analyzer)", c, m)
              for c, m in r["oip_http"].items()],
            *[("OIP v2 gRPC, FP32 tensors (perf_analyzer)", c, m)
              for c, m in r["oip_grpc"].items()]]
    lines = [
        f"# Benchmark {r['date']}", "",
        f"{r['cpus']} CPUs, one server under load at a time (the floor stays up, idle, until "
        "digit-service's rows are done); the floor and digit-service each run as "
        f"{r['workers']} server process(es) (uvicorn, uvloop, httptools, an SO_REUSEPORT socket "
        "each), the naive service as one; `wrk -t1`, "
        f"{r['seconds_per_run']} s per run, multipart PNG uploads of held-out MNIST digits; "
        "the Open Inference Protocol rows are Triton's `perf_analyzer` (synchronous requests, "
        "one FP32 [1, 28, 28, 1] tensor of the same digits each) against the same digit-service. "
        f"Every digit-service row and the raw model are the default model, "
        f"{r.get('model', 'sequential')}. Reproduce: `make bench`.", "",
        "| what | concurrency | req/s | images/s | p50 ms | p99 ms | errors "
        "| server CPU µs/request |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, concurrency, m in rows:
        images = m["requests_per_s"] * (64 if "64 images" in name else 1)
        errors = "unstable (not measured)" if m.get("unstable") else m["errors"]
        cpu = f"{m['server_cpu_us']:,.0f}" if m.get("server_cpu_us") else ""
        lines.append(f"| {name} | {concurrency} | {m['requests_per_s']:,.0f} | {images:,.0f} | "
                     f"{m['p50_ms']:.2f} | {m['p99_ms']:.2f} | {errors} | {cpu} |")
    raw = r["raw"]
    lines += [
        "", f"The raw model as the service runs it ({raw.get('runtime', 'tensorflow')}), "
        "in-process: "
        f"{raw['batch_1_images_per_s']:,.0f} images/s at batch 1, "
        f"{raw['batch_128_images_per_s']:,.0f} images/s at batch 128"
        + (", and " + " and ".join(f"{c:,.0f}" for c in r["raw_around_batch64"])
           + " at batch 128 right before and after the 64-image row (their mean is that "
           "row's ceiling)." if r.get("raw_around_batch64") else "."),
        *(["HTTP floor right before and after the service's c=32 row: "
           + " and ".join(f"{m['requests_per_s']:,.0f}" for m in r["floor_around_c32"])
           + " req/s (their mean is what that row is compared with)."]
          if r.get("floor_around_c32") else []),
        *(["`/predict` at c=32 right before and after the protocols' c=32 rows: "
           + " and ".join(f"{m['requests_per_s']:,.0f}" for m in r["predict_around_protocols"])
           + " req/s (their mean is what those rows are compared with)."]
          if r.get("predict_around_protocols") else []),
        *cpu_lines(r),
        f"Service cold start to ready: {r['service_cold_start_s']:.1f} s; RSS (with its workers) "
        f"{r['service_rss_mb_ready']:.0f} MiB when ready, {r['service_rss_mb_after']:.0f} MiB "
        "after the runs.", "",
        "| target | measured | goal | met |", "|---|---:|---:|:---:|",
    ]
    for t in r["targets"]:
        lines.append(f"| {t['target']} | {t['measured']:.2f} | {t['goal']} | "
                     f"{'yes' if t['met'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def cpu_lines(r: dict) -> list[str]:
    """What the rows cost the server in CPU, and what the load generators took for
    themselves (older results: nothing)."""
    predict = [m.get("server_cpu_us") for m in r.get("predict_around_protocols", [])]
    if not predict or None in predict or not r.get("raw_cpu_around_batch64"):
        return []
    predict_us = sum(predict) / len(predict)

    def against_predict(m: dict) -> str:
        cost = m.get("server_cpu_us")
        return (f"{cost:,.0f} ({cost / predict_us:.2f} of `/predict`'s)" if cost
                else "not measured")

    per_image = r["service_batch64"]["server_cpu_us"] / 64
    model = sum(r["raw_cpu_around_batch64"]) / len(r["raw_cpu_around_batch64"])
    protocols = [*r["oip_http"].values(), *r["oip_grpc"].values()]
    analyzer = [m["client_cores"] for m in protocols if "client_cores" in m]
    generators = [m["client_cores"] for m in [*r["service"].values(), r["service_batch64"]]
                  if "client_cores" in m]
    return [
        "Server CPU (its processes and decoders, from /proc; it drifts less than throughput): "
        f"at c=32, `/predict` {predict_us:,.0f} µs a request (the runs around the protocols'), "
        f"OIP v2 HTTP {against_predict(r['oip_http'][32])}, gRPC "
        f"{against_predict(r['oip_grpc'][32])}; with 64 images a request "
        f"{per_image:,.1f} µs an image, against the raw model's own {model:,.1f} µs of CPU an "
        f"image at batch 128 ({model / per_image:.2f} of it).",
        f"The load generators' own CPU: wrk {min(generators):.2f}–{max(generators):.2f} of "
        f"a core, perf_analyzer {min(analyzer, default=0):.2f}–{max(analyzer, default=0):.2f}, "
        f"of the {r['cpus']} the servers share with them.",
    ]


def chart(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    concurrency = list(r["service"])
    figure, (throughput, tail) = plt.subplots(1, 2, figsize=(10, 3.8))
    throughput.plot(concurrency, [m["requests_per_s"] for m in r["service"].values()],
                    marker="o", label="digit-service")
    tail.plot(concurrency, [m["p99_ms"] for m in r["service"].values()], marker="o",
              label="digit-service")
    for name, key, marker in (("HTTP floor", "floor", "s"), ("naive predict", "naive", "^")):
        throughput.scatter([32], [r[key]["requests_per_s"]], marker=marker, label=name, zorder=3)
        tail.scatter([32], [r[key]["p99_ms"]], marker=marker, label=name, zorder=3)
    throughput.set(xscale="log", yscale="log", xlabel="concurrent clients",
                   ylabel="requests/s (1 image each)", title="Throughput")
    tail.set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="p99 latency (ms)",
             title="Tail latency")
    for axis in (throughput, tail):
        axis.set_xticks(concurrency, [str(c) for c in concurrency])
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    perf_analyzer.install()
    run(args.seconds, args.out)


if __name__ == "__main__":
    main()
