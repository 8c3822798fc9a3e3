"""Choosing the device the models run on, importing TensorFlow only to look for a GPU."""

from __future__ import annotations

import logging
from pathlib import Path

from app.runtimes import tensorflow_installed
from app.settings import DeviceChoice

logger = logging.getLogger("digits.devices")


class DeviceUnavailable(RuntimeError):
    """The configured device does not exist on this machine."""


def select_device(choice: DeviceChoice) -> str:
    """Return a TensorFlow device name ("/GPU:0" or "/CPU:0") for the configured choice.

    `auto` asks TensorFlow (seconds to import) only where an NVIDIA device node exists:
    without one no GPU can be used, and a CPU server then never imports TensorFlow.
    """
    if choice == DeviceChoice.cpu or (choice == DeviceChoice.auto and not nvidia_devices()):
        return "/CPU:0"
    if not tensorflow_installed():
        if choice == DeviceChoice.gpu:
            raise DeviceUnavailable("DIGITS_DEVICE=gpu needs TensorFlow's CUDA build (the GPU "
                                    "image, or pip install '.[gpu]').")
        return "/CPU:0"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            # Take GPU memory as needed rather than all of it, so other processes can share.
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised in this process; the setting stands
            pass
    if gpus:
        return "/GPU:0"
    if choice == DeviceChoice.gpu:
        raise DeviceUnavailable(
            "DIGITS_DEVICE=gpu but TensorFlow sees no GPU. Install the CUDA build "
            "(pip install '.[gpu]'), check the driver with nvidia-smi, or set DIGITS_DEVICE=auto "
            "or cpu.")
    return "/CPU:0"


def nvidia_devices() -> bool:
    """Whether this machine (or container) exposes an NVIDIA GPU's device nodes."""
    return Path("/dev/nvidiactl").exists() or any(Path("/dev").glob("nvidia[0-9]*"))
