"""The two ways a model version runs: LiteRT on CPU, TensorFlow on GPU.

A version directory holds the SavedModel and, since LiteRT export, the same model as
`model.tflite`. On CPU the LiteRT file is served: its interpreter imports in a tenth of a
second and holds a few megabytes, where TensorFlow takes seconds and half a gigabyte per
process, and it answers a single digit several times faster at the same batch throughput.
TensorFlow serves on GPU, a version without the file, or when `DIGITS_RUNTIME=tensorflow`;
it is imported only then (the CPU image does not even install it).

Both give a `Runner`: float32 images [n, 28, 28, 1] in, probabilities [n, 10] out.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path

import numpy as np

from digit_contract import INPUT_SHAPE, LITERT_FILE, SIGNATURE_NAME

logger = logging.getLogger("digits.runtimes")

Runner = Callable[[np.ndarray], np.ndarray]


class Runtime(StrEnum):
    auto = "auto"  # LiteRT on CPU when the version has the file and LiteRT is installed
    litert = "litert"
    tensorflow = "tensorflow"


def choose(runtime: Runtime, device: str, version_dir: Path) -> Runtime:
    """The runtime a version will run on."""
    if runtime == Runtime.auto:
        usable = (device.upper().startswith("/CPU") and (version_dir / LITERT_FILE).exists()
                  and litert_installed())
        return Runtime.litert if usable else Runtime.tensorflow
    return runtime


def litert_installed() -> bool:
    return importlib.util.find_spec("ai_edge_litert") is not None


def tensorflow_installed() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


def load(runtime: Runtime, version_dir: Path, device: str, threads: int
         ) -> tuple[Runner, object]:
    """The version's runner, and an object to keep alive as long as it serves."""
    if runtime == Runtime.litert:
        model = LiteRTModel(version_dir / LITERT_FILE, threads)
        return model, model
    return load_tensorflow(version_dir, device, threads)


class LiteRTModel:
    """One LiteRT interpreter, resized to each batch's size (a fraction of a millisecond)."""

    def __init__(self, path: Path, threads: int):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.output = self.interpreter.get_output_details()[0]["index"]
        self.batch_size = 0
        # An interpreter runs one call at a time; each model's batcher calls it from one
        # thread, but tests and warm-ups may not.
        self.lock = threading.Lock()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.ascontiguousarray(images, dtype=np.float32)
        with self.lock:
            if len(images) != self.batch_size:
                self.interpreter.resize_tensor_input(self.input, [len(images), *INPUT_SHAPE])
                self.interpreter.allocate_tensors()
                self.batch_size = len(images)
            self.interpreter.set_tensor(self.input, images)
            self.interpreter.invoke()  # releases the interpreter lock while it computes
            return self.interpreter.get_tensor(self.output).copy()


def load_tensorflow(version_dir: Path, device: str, threads: int) -> tuple[Runner, object]:
    import tensorflow as tf

    limit_tensorflow_threads(threads)
    with tf.device(device):
        saved = tf.saved_model.load(str(version_dir))
    serve = serving_function(saved)

    def run(images: np.ndarray) -> np.ndarray:
        with tf.device(device):
            return serve(tf.convert_to_tensor(images, dtype=tf.float32)).numpy()

    # The signature function holds only weak references to its variables: keep `saved`.
    return run, saved


def serving_function(saved):
    """The SavedModel as one concrete function: float32 [n, 28, 28, 1] -> probabilities.

    Keras exports the same graph twice: as the `serve` endpoint and wrapped in the
    `serving_default` signature for TensorFlow Serving. On CPU the signature's extra call
    layer costs about 3 ms per call against 0.5 ms for the endpoint, so the endpoint is
    used when the SavedModel has it; the signature is the fallback.
    """
    import tensorflow as tf

    endpoint = getattr(saved, "serve", None)
    if endpoint is not None:
        return endpoint.get_concrete_function(tf.TensorSpec((None, *INPUT_SHAPE), tf.float32))
    signature = saved.signatures[SIGNATURE_NAME]
    return lambda images: next(iter(signature(images).values()))


def limit_tensorflow_threads(threads: int) -> None:
    """Give TensorFlow `threads` CPU threads, both within one op and across ops.

    With one server process per core, TensorFlow's default (a thread per core in every
    process) has the processes' thread pools spinning against each other for the same cores.
    """
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow already ran in this process (tests build many apps)
        logger.debug("TensorFlow's thread pools are already running; keeping them")
