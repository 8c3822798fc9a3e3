"""Triton's own load generator, `perf_analyzer`, installed into the virtualenv and run.

PyPI's `perf-analyzer` package is an empty placeholder; the binary ships in the manylinux
wheels of `tritonclient`. The last of those built for this machine's glibc (2.36, Debian
12) is 2.50.0; it needs `libb64` (Debian: `apt-get install libb64-0d`) and the CUDA
runtime library, which it links but, without shared memory options, never uses
(`nvidia-cuda-runtime-cu12` from PyPI). `python -m bench.perf_analyzer` installs both into
`.venv/perf_analyzer/` and puts a `perf_analyzer` launcher in `.venv/bin/`.
"""

from __future__ import annotations

import csv
import ctypes.util
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

TRITONCLIENT = "tritonclient==2.50.0"
CUDA_RUNTIME = "nvidia-cuda-runtime-cu12"
HOME = Path(sys.prefix) / "perf_analyzer"
LAUNCHER = Path(sys.prefix) / "bin" / "perf_analyzer"


def install() -> Path:
    """The launcher, installed first if it is not there yet."""
    if LAUNCHER.exists():
        return LAUNCHER
    if ctypes.util.find_library("b64") is None:
        sys.exit("perf_analyzer needs libb64: apt-get install libb64-0d")
    HOME.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as downloads:
        for requirement, platform in [(TRITONCLIENT, "manylinux1_x86_64"),
                                      (CUDA_RUNTIME, "manylinux_2_17_x86_64")]:
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                            "--only-binary=:all:", "--platform", platform, "--python-version",
                            "3.11", requirement, "-d", downloads], check=True)
        for wheel in Path(downloads).glob("*.whl"):
            with zipfile.ZipFile(wheel) as archive:
                for name in archive.namelist():
                    if name.endswith(("/bin/perf_analyzer", "/libcudart.so.12")):
                        target = HOME / Path(name).name
                        target.write_bytes(archive.read(name))
                        target.chmod(0o755)
    library_path = f'"{HOME}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}"'
    LAUNCHER.write_text(f'#!/bin/sh\nLD_LIBRARY_PATH={library_path} '
                        f'exec "{HOME}/perf_analyzer" "$@"\n')
    LAUNCHER.chmod(0o755)
    return LAUNCHER


# What perf_analyzer prints when the throughput of its windows kept varying by more than
# --stability-percentage: the machine's noise, not the server's failure. Such a run is tried
# again, and reported as unstable (not as an error) if it never settles.
UNSTABLE = "Failed to obtain stable measurement"
ATTEMPTS = 3


def measure(url: str, protocol: str, model: str, concurrency: int, seconds: float,
            digits: np.ndarray) -> dict:
    """perf_analyzer at one concurrency: FP32 [1, 28, 28, 1] tensors of `digits` (uint8
    [n, 28, 28], scaled as the models take them; perf_analyzer's own random data would be
    random bits, NaN among them), synchronous requests, binary tensors over HTTP; its stable
    throughput and client latencies. A failed request fails the run (errors: 1); a run
    whose throughput never settles is tried again, up to ATTEMPTS times, then reported with
    `unstable` and no throughput."""
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "digits.json"
        data.write_text(json.dumps({"data": [
            {"image": {"content": (digit.astype(np.float32) / 255).ravel().tolist(),
                       "shape": [28, 28, 1]}} for digit in digits]}))
        for attempt in range(1, ATTEMPTS + 1):
            result = _run_once(url, protocol, model, concurrency, seconds, data,
                               Path(scratch) / f"report-{attempt}.csv")
            if not result.get("unstable"):
                break
        return {**result, "attempts": attempt}


def _run_once(url: str, protocol: str, model: str, concurrency: int, seconds: float,
              data: Path, report: Path) -> dict:
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    done = subprocess.run(
        [str(install()), "-m", model, "-u", url, "-i", protocol, "-b", "1",
         "--input-data", str(data),
         "--concurrency-range", str(concurrency),
         "--measurement-interval", str(int(seconds * 1000 / 3)), "--max-trials", "6",
         "--stability-percentage", "20", "-f", str(report)],
        capture_output=True, text=True, timeout=seconds * 10 + 60)
    after, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic() - started
    if done.returncode != 0 or not report.exists():
        output = done.stdout + done.stderr
        return {"requests_per_s": 0.0, "p50_ms": 0.0, "p99_ms": 0.0,
                "errors": 0 if UNSTABLE in output else 1, "unstable": UNSTABLE in output,
                "output": output[-2000:]}
    [row] = list(csv.DictReader(io.StringIO(report.read_text())))
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"requests_per_s": float(row["Inferences/Second"]),
            "p50_ms": float(row["p50 latency"]) / 1000, "p99_ms": float(row["p99 latency"]) / 1000,
            "errors": 0, "client_cores": round(cpu / wall, 2)}


if __name__ == "__main__":
    print(install())
