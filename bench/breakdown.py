"""Where a request's time goes: the service with parts switched off.

    python -m bench.breakdown [--seconds 6] [--images 1] [--connections 32]

Runs the real app (one process) five times on 127.0.0.1, each driven by wrk with uploads of
`--images` held-out digits (`--images 64 --connections 8`: the 64-image row of make bench):
`route only` (read and parse the upload, answer a fixed body), `+ batcher` (queue, batch
thread and response, with no-op decoding and model), `+ model` (the real model on blank
digits), `full` (real decoding too), and `full` with even small plain PNGs sent to the
decoder worker processes. The differences are what each stage costs.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

STAGES = ("route only", "+ batcher", "+ model", "full", "full, every image in workers")


def serve(stage: str, port: int) -> None:
    """Run the app with the stages after `stage` replaced by no-ops (in a child process)."""
    import uvicorn
    from fastapi import Response

    import app.routers.predict as predict_route
    import app.service as service_module
    from app.main import create_app
    from app.settings import Settings

    if stage == "full, every image in workers":
        import dataclasses

        import app.preprocess_workers as workers

        inspect = workers.inspect
        workers.inspect = lambda *args: dataclasses.replace(inspect(*args), simple=False)
        workers.inspect_simple = lambda *args: None
    elif stage == "route only":
        async def parse_and_answer(request, style, debug):
            settings = request.state.settings
            await predict_route.read_uploads(request, settings.max_upload_bytes,
                                             settings.max_images_per_request)
            return Response(b'{"ok":true}', media_type="application/json")

        predict_route._predict = parse_and_answer
    elif stage in ("+ batcher", "+ model"):
        original_serve = service_module.PredictionService.serve

        def serve(self, model):
            served = original_serve(self, model)
            served.batcher._prepare = lambda payloads: [np.zeros((len(p), 28, 28), np.uint8)
                                                        for p in payloads]
            if stage == "+ batcher":
                served.batcher._predict = lambda batch: np.full((len(batch), 10), 0.1,
                                                                np.float32)
            return served

        service_module.PredictionService.serve = serve
    uvicorn.run(create_app(Settings(log_level="warning")), host="127.0.0.1", port=port,
                log_level="warning", loop="uvloop", http="httptools")


def main() -> None:
    from bench.run import multipart, png, sample_digits, server, wrk

    parser = argparse.ArgumentParser(prog="python -m bench.breakdown", description=__doc__)
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--images", type=int, default=1, help="digits per request")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    body = multipart([png(digit) for digit in sample_digits(args.images)])
    c = args.connections
    print(f"| stage | req/s at c={c} | µs per request | µs per image |\n|---|---:|---:|---:|")
    for stage in STAGES:
        command = [sys.executable, "-m", "bench.breakdown", "--serve", stage, "{port}"]
        with server(command, "/readyz") as (base, _, _):
            wrk(base + "/predict", body, c, 2)
            result = wrk(base + "/predict", body, c, args.seconds)
        if result["errors"]:
            raise RuntimeError(f"{stage}: {result['errors']} failed requests; see the stage's code")
        rate = result["requests_per_s"]
        print(f"| {stage} | {rate:,.0f} | {1e6 / rate:,.0f} | {1e6 / rate / args.images:,.1f} |",
              flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]))
    else:
        main()
