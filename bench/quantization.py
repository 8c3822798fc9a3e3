"""`python -m bench.quantization`: what int8 weights buy the LiteRT files.

Converts each style's latest SavedModel twice, as float32 and with the dynamic-range int8
weights `training.export.to_litert` writes since version 3, and measures both in process,
one thread (as each server process runs them), at batch 1 and 16: images/s and file size.
The answers are compared by `python -m bench.accuracy --runtimes`.
"""

from __future__ import annotations

import time

import numpy as np

from bench.run import REPO, sample_digits
from digit_contract import Style, list_versions


def images_per_s(flatbuffer: bytes, batch: np.ndarray, seconds: float = 2.0) -> float:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=flatbuffer, num_threads=1)
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, list(batch.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, batch)
    interpreter.invoke()
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        interpreter.set_tensor(index, batch)
        interpreter.invoke()
        calls += 1
    return calls * len(batch) / (time.perf_counter() - started)


def main() -> None:
    import tensorflow as tf

    from training.export import to_litert

    digits = sample_digits(16)[..., np.newaxis].astype(np.float32) / 255
    print("| model | file | size | images/s, batch 1 | images/s, batch 16 |\n"
          "|---|---|---:|---:|---:|")
    for style in Style:
        version = max(list_versions(REPO / "models" / style.value))
        saved_model = REPO / "models" / style.value / str(version)
        files = {"float32": tf.lite.TFLiteConverter.from_saved_model(str(saved_model)).convert(),
                 "int8 weights": to_litert(saved_model)}
        speeds = {}
        for kind, flatbuffer in files.items():
            speeds[kind] = [images_per_s(flatbuffer, digits[:n]) for n in (1, 16)]
            print(f"| {style.value} v{version} | {kind} | {len(flatbuffer) // 1024} KiB | "
                  f"{speeds[kind][0]:,.0f} | {speeds[kind][1]:,.0f} |", flush=True)
        gain = [q / f for q, f in zip(speeds["int8 weights"], speeds["float32"], strict=True)]
        print(f"| | int8 / float32 | | {gain[0]:.1f}x | {gain[1]:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
