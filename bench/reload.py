"""`python -m bench.reload`: new model versions going live under load (issue 14's figures).

A real `python -m app` serves the committed models, copied to a scratch model directory,
while 32 clients send single digits to `POST /predict`. Ten times over, a new version of
`sequential` is written the way `python -m training` writes one (copied aside, renamed into
place). For each reload it records how long the new version took to load and warm up, how
long after the rename the first answer came from it (the poll interval bounds most of
that), and the server's resident memory once the old version is released. Every answer is
checked: status 200, and after the first answer from a new version no request that started
later was answered by an older one. Runs once per runtime (LiteRT, the CPU default, and
TensorFlow, what a GPU serves). Writes bench/results/reload-<date>.md and .json.

    python -m bench.reload [--reloads 10] [--poll 1] [--out bench/results]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.run import REPO, png, rss_mb, sample_digits, server
from digit_contract import Style

CLIENTS = 32


class Load:
    """Clients sending one digit per request in a loop; each answer is kept."""

    def __init__(self, base: str, body: bytes):
        self.base, self.body = base, body
        self.answers: list[tuple[float, float, int, int | None]] = []  # start, end, status, v
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client) for _ in range(CLIENTS)]

    def _client(self) -> None:
        with httpx.Client(base_url=self.base, timeout=30) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    response = client.post("/predict", content=self.body,
                                           headers={"content-type": "image/png"})
                    status = response.status_code
                    version = response.json().get("version") if status == 200 else None
                except httpx.HTTPError:
                    status, version = 0, None
                self.answers.append((started, time.monotonic(), status, version))

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def first_answer_from(self, version: int, after: float) -> float | None:
        ends = [end for start, end, _, v in self.answers if v == version and end >= after]
        return min(ends, default=None)


def publish(style_dir: Path, version: int, source: Path) -> None:
    staging = style_dir / f".staging-{version}"
    shutil.copytree(source, staging)
    staging.rename(style_dir / str(version))


def measure(runtime: str, reloads: int, poll_s: float, body: bytes) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = Path(scratch)
        source = {style: REPO / "models" / style.value / "2" for style in Style}
        for style in Style:
            (model_dir / style.value).mkdir()
            publish(model_dir / style.value, 1, source[style])
        command = [sys.executable, "-m", "app", "--port", "{port}", "--model-dir",
                   str(model_dir)]
        env = {"DIGITS_RUNTIME": runtime, "DIGITS_MODEL_POLL_SECONDS": str(poll_s),
               "DIGITS_LOG_LEVEL": "warning", "DIGITS_ACCESS_LOG": "false"}
        rows = []
        with server(command, "/readyz", env) as (base, process, _), Load(base, body) as load:
            time.sleep(2)
            resident_before = rss_mb(process.pid)
            for version in range(2, reloads + 2):
                written = time.monotonic()
                publish(model_dir / "sequential", version, source[Style.sequential])
                while (seen := load.first_answer_from(version, written)) is None:
                    if time.monotonic() - written > poll_s + 60:
                        raise RuntimeError(f"version {version} never answered")
                    time.sleep(0.01)
                time.sleep(1.0)  # the old version drains and is released
                info = httpx.get(f"{base}/models/sequential").json()
                assert [v["version"] for v in info["served"]] == [version], info
                rows.append({"version": version, "live_after_s": round(seen - written, 3),
                             "load_s": info["served"][0]["load_seconds"],
                             "resident_mb": round(rss_mb(process.pid), 1)})
        answers = load.answers
        first_seen = {v: min(end for _, end, _, w in answers if w == v)
                      for v in range(2, reloads + 2)}
        stale = sum(1 for start, _, _, v in answers
                    if v is not None and any(start > first_seen[w] for w in first_seen if w > v))
        return {"runtime": runtime, "poll_s": poll_s, "requests": len(answers),
                "failed": sum(1 for a in answers if a[2] != 200), "stale": stale,
                "resident_before_mb": round(resident_before, 1), "reloads": rows,
                "resident_growth": round(rows[-1]["resident_mb"] / rows[0]["resident_mb"], 3)}


def markdown(results: list[dict], date: str) -> str:
    lines = [f"# Model reloads under load, {date}", "",
             f"`python -m bench.reload`: {CLIENTS} clients send single digits while ten new "
             "versions of `sequential` are written, one after another.", "",
             "| runtime | requests | failed | stale answers | load + warm-up s (median) | "
             "live after rename s (median / max) | RSS MB before, after reload 1, after "
             "reload 10 | growth over reloads 1 to 10 |",
             "|---|---:|---:|---:|---:|---:|---|---:|"]
    for r in results:
        loads = sorted(row["load_s"] for row in r["reloads"])
        lives = sorted(row["live_after_s"] for row in r["reloads"])
        lines.append(
            f"| {r['runtime']} | {r['requests']:,} | {r['failed']} | {r['stale']} | "
            f"{loads[len(loads) // 2]:.3f} | {lives[len(lives) // 2]:.2f} / {lives[-1]:.2f} | "
            f"{r['resident_before_mb']:.0f}, {r['reloads'][0]['resident_mb']:.0f}, "
            f"{r['reloads'][-1]['resident_mb']:.0f} | {r['resident_growth']:.3f} |")
    lines += ["", f"Poll interval {results[0]['poll_s']} s: a new version goes live at the "
              "first poll after its rename, so 'live after' is up to one interval plus the "
              "load. 'Stale' counts requests that started after a newer version had "
              "answered someone and were still answered by an older one.", ""]
    for r in results:
        lines.append(f"RSS MB after each reload ({r['runtime']}): "
                     + ", ".join(f"{row['resident_mb']:.0f}" for row in r["reloads"]))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.reload", description=__doc__)
    parser.add_argument("--reloads", type=int, default=10)
    parser.add_argument("--poll", type=float, default=1.0)
    parser.add_argument("--runtime", action="append", choices=["litert", "tensorflow"])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    body = png(sample_digits(1)[0])
    results = [measure(runtime, args.reloads, args.poll, body)
               for runtime in args.runtime or ["litert", "tensorflow"]]
    date = dt.date.today().isoformat()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"reload-{date}.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / f"reload-{date}.md").write_text(markdown(results, date))
    print(markdown(results, date))


if __name__ == "__main__":
    main()
