"""The naive reference: a tutorial-style endpoint calling Keras `model.predict` per request.

Greyscale, resize to 28x28, scale, predict: no batching, no preprocessing for real images.
"""

import io
import os

import keras
import numpy as np
from fastapi import FastAPI, UploadFile
from PIL import Image

MODEL_PATH = os.environ.get("NAIVE_MODEL", "models/sequential/1")

model = keras.Sequential([
    keras.Input(shape=(28, 28, 1)),
    keras.layers.TFSMLayer(MODEL_PATH, call_endpoint="serving_default"),
])
app = FastAPI()


@app.post("/predict")
def predict(file: UploadFile) -> dict:
    image = Image.open(io.BytesIO(file.file.read())).convert("L").resize((28, 28))
    pixels = np.asarray(image, dtype=np.float32)[np.newaxis, ..., np.newaxis] / 255.0
    probabilities = next(iter(model.predict(pixels, verbose=0).values()))[0]
    return {"digit": int(probabilities.argmax()), "probabilities": probabilities.tolist()}
