"""The HTTP floor: FastAPI receiving the same multipart upload and doing no work with it.

`/predict` is the idiomatic endpoint (FastAPI parses the form into an `UploadFile`);
`/bare` only reads the raw body, for reference.
"""

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
