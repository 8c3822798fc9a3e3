"""Draw docs/preprocessing.png: images sent the way people send them, beside the 28x28
digit the model saw (from `?debug=true`) and its answer. Uses the committed models.

    python -m scripts.preprocessing_figure [--data ../shared/data/mnist-train.npz]
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
from scripts.realworld_images import REAL_WORLD

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/mnist-train.npz")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "preprocessing.png")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with np.load(args.data) as data:  # held-out digits: the last 5,000
        digits, labels = data["x_train"][-5000:], data["y_train"][-5000:]
    rng = np.random.default_rng(7)
    picks = rng.choice(len(digits), size=len(REAL_WORLD), replace=False)
    settings = Settings(model_dir=REPO / "models", device="cpu", access_log=False)
    figure, axes = plt.subplots(2, len(REAL_WORLD), figsize=(2.2 * len(REAL_WORLD), 4.8))
    with TestClient(create_app(settings)) as client:
        for column, ((name, redraw), index) in enumerate(zip(REAL_WORLD.items(), picks,
                                                             strict=True)):
            sent = redraw(digits[index], rng)
            answer = client.post("/predict?debug=true", content=sent,
                                 headers={"content-type": "application/octet-stream"}).json()
            prediction = answer["predictions"][0]
            seen = Image.open(io.BytesIO(base64.b64decode(prediction["model_input"])))
            original = Image.open(io.BytesIO(sent))
            axes[0, column].imshow(original.convert("RGBA") if original.mode in ("RGBA", "LA")
                                   else original.convert("RGB"))
            axes[0, column].set_title(f"{name}\n{original.width}x{original.height} "
                                      f"{original.format}", fontsize=9)
            axes[1, column].imshow(np.asarray(seen), cmap="gray", vmin=0, vmax=255)
            axes[1, column].set_title(f"model saw 28x28\nsays {prediction['digit']} "
                                      f"({prediction['confidence']:.0%}), true {labels[index]}",
                                      fontsize=9)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    axes[0, 0].set_ylabel("as sent")
    axes[1, 0].set_ylabel("after preprocessing")
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
