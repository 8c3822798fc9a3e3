"""Draw docs/realworld.png: real scanned digits from the dev set (top pair of rows) and
generated pen-and-writer cases (bottom pair), each as sent beside the 28x28 digit the
default model saw (from `?debug=true`) and its answer. Uses the committed models.

    python -m scripts.realworld_figure [--data ../shared/data/mnist-train.npz]

The dev set: UCI Optical Recognition of Handwritten Digits (Alpaydin & Kaynak, 1995;
CC BY 4.0), 32x32 bitmaps of 30 writers' digits, as in ../shared/data/realworld-dev.
"""

from __future__ import annotations

import argparse
import base64
import io
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.settings import Settings
from bench.accuracy import dev_set
from scripts.realworld_images import PENS_AND_WRITERS

REPO = Path(__file__).resolve().parent.parent
COLUMNS = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/mnist-train.npz")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "realworld.png")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images, labels = dev_set()
    rng = np.random.default_rng(3)
    # One dev digit of each class, then the generated classes, each from a held-out digit.
    sent = [(images[i], int(labels[i]), "dev set") for i in
            [int(rng.choice(np.flatnonzero(labels == d))) for d in range(COLUMNS)]]
    with np.load(args.data) as data:
        digits, truths = data["x_train"][-5000:], data["y_train"][-5000:]
    picks = rng.choice(len(digits), size=len(PENS_AND_WRITERS), replace=False)
    sent += [(make(digits[i], rng), int(truths[i]), name)
             for (name, make), i in zip(PENS_AND_WRITERS.items(), picks, strict=True)]

    settings = Settings(model_dir=REPO / "models", device="cpu", access_log=False)
    rows = 2 * -(-len(sent) // COLUMNS)
    figure, axes = plt.subplots(rows, COLUMNS, figsize=(1.7 * COLUMNS, 2.0 * rows))
    with TestClient(create_app(settings)) as client:
        for k, (data, truth, kind) in enumerate(sent):
            answer = client.post("/predict?debug=true", content=data,
                                 headers={"content-type": "application/octet-stream"}).json()
            prediction = answer["predictions"][0]
            seen = Image.open(io.BytesIO(base64.b64decode(prediction["model_input"])))
            top, bottom = axes[2 * (k // COLUMNS), k % COLUMNS], axes[2 * (k // COLUMNS) + 1,
                                                                        k % COLUMNS]
            top.imshow(Image.open(io.BytesIO(data)).convert("RGB"))
            top.set_title(kind.replace("_", " "), fontsize=8)
            bottom.imshow(np.asarray(seen), cmap="gray", vmin=0, vmax=255)
            bottom.set_title(f"says {prediction['digit']}, true {truth}", fontsize=8,
                             color="black" if prediction["digit"] == truth else "red")
        model = f"{answer['model']} v{answer['version']}"
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
        if not axis.images:
            axis.axis("off")
    figure.suptitle(f"As sent (above) and what {model} saw (below)", fontsize=10)
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
