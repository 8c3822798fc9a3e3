"""What each hostile input costs a real server: `python -m bench.hostile`.

Starts `python -m app` (the committed models, default limits, 2 decoder processes), sends
each input of `tests/hostile/inputs.py` once with a valid request alongside, and prints a
markdown table: the answer, the time to it, the peak memory growth of the server process
and of its decoder workers, the valid neighbour's answer and latency, and what the input
did before the service defended against it. `tests/hostile/` asserts the same figures.
"""

from __future__ import annotations

import sys

from bench.run import REPO, server
from tests.hostile.inputs import cases
from tests.hostile.probe import attack


def main() -> None:
    print("generating the hostile requests…", file=sys.stderr, flush=True)
    hostile = cases()
    with server([sys.executable, "-m", "app", "--port", "{port}"], "/readyz",
                env={"DIGITS_LOG_LEVEL": "error", "DIGITS_PREPROCESS_WORKERS": "2"}) as (
            base, process, _):
        rows = [(case, attack((process, base), case)) for case in hostile]
    print("| input | bytes | answer | seconds | server +MB | worker +MB | neighbour | before |")
    print("|---|---:|---:|---:|---:|---:|---|---|")
    for case, r in rows:
        growth = r["growth"]
        server_growth = growth.pop(process.pid, 0.0)
        worker_growth = max(growth.values(), default=0.0)
        status, seconds = r["neighbour"] or (None, 0.0)
        print(f"| {case.name} | {len(case.body):,} | {r['status'] or 'closed'} | "
              f"{r['seconds']:.3f} | {server_growth:.1f} | {worker_growth:.1f} | "
              f"{status} in {seconds * 1000:.0f} ms | {case.was} |")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
