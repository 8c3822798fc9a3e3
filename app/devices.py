"""Choosing the TensorFlow device the models run on."""

from __future__ import annotations

import logging

import tensorflow as tf

from app.settings import DeviceChoice

logger = logging.getLogger("digits.devices")


class DeviceUnavailable(RuntimeError):
    """The configured device does not exist on this machine."""


def select_device(choice: DeviceChoice) -> str:
    """Return a TensorFlow device name ("/GPU:0" or "/CPU:0") for the configured choice."""
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            # Take GPU memory as needed rather than all of it, so other processes can share.
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised in this process; the setting stands
            pass
    if choice == DeviceChoice.cpu:
        return "/CPU:0"
    if gpus:
        return "/GPU:0"
    if choice == DeviceChoice.gpu:
        raise DeviceUnavailable(
            "DIGITS_DEVICE=gpu but TensorFlow sees no GPU. Install the CUDA build "
            "(pip install '.[gpu]'), check the driver with nvidia-smi, or set DIGITS_DEVICE=auto "
            "or cpu.")
    return "/CPU:0"


def limit_cpu_threads(threads: int) -> None:
    """Give TensorFlow `threads` CPU threads, both within one op and across ops.

    With one server process per core, TensorFlow's default (a thread per core in every
    process) has the processes' thread pools spinning against each other for the same cores.
    """
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow already ran in this process (tests build many apps)
        logger.debug("TensorFlow's thread pools are already running; keeping them")
