"""The HTTP floor: FastAPI receiving the same multipart upload and doing no work with it.

`/predict` is the idiomatic endpoint (FastAPI parses the form into an `UploadFile`);
`/bare` only reads the raw body, for reference.

    python -m bench.floor_app --port P --workers N

runs it as the service runs: uvicorn with uvloop and httptools, N processes each on its
own SO_REUSEPORT socket.
"""

import argparse

from fastapi import FastAPI, Request, UploadFile
from fastapi.responses import Response

ANSWER = {"model": "sequential", "version": 1, "predictions": [
    {"digit": 7, "confidence": 0.99, "probabilities": [0, 0, 0, 0, 0, 0, 0, 0.99, 0, 0]}]}
ANSWER_BYTES = (b'{"model":"sequential","version":1,"predictions":[{"digit":7,"confidence":0.99,'
                b'"probabilities":[0,0,0,0,0,0,0,0.99,0,0]}]}')

app = FastAPI()


@app.post("/predict")
async def predict(file: UploadFile) -> dict:
    return ANSWER


@app.post("/bare")
async def bare(request: Request) -> Response:
    await request.body()
    return Response(ANSWER_BYTES, media_type="application/json")


def main() -> None:
    import uvicorn

    from app.processes import serve_processes

    parser = argparse.ArgumentParser(prog="python -m bench.floor_app")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    config = uvicorn.Config("bench.floor_app:app", host="127.0.0.1", port=args.port,
                            loop="uvloop", http="httptools", access_log=False,
                            log_level="warning")
    if args.workers == 1:
        uvicorn.Server(config).run()
    else:
        serve_processes(config, args.workers)


if __name__ == "__main__":
    main()
