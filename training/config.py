"""Frozen training configuration: every knob of a run in one place."""

from __future__ import annotations

import dataclasses
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    epochs: int = 30
    batch_size: int = 128
    seed: int = 42
    val_size: int = 5000
    learning_rate: float = 1e-3
    # The learning rate is multiplied by this each epoch after the first `warm_epochs`.
    lr_decay: float = 0.85
    warm_epochs: int = 2
    # Long enough that the decaying learning rate, not a noisy plateau, ends a run: with 8,
    # augmented runs stopped near epoch 20 while the rate was still 5x its final value, and
    # their MNIST accuracy stayed below version 1's (which ran to epochs 23-30).
    early_stopping_patience: int = 15
    augment: bool = True
    # Augmentation ranges: shifts and zoom as fractions of the image, rotation in turns.
    shift: float = 0.08
    rotation: float = 0.025
    zoom: float = 0.08
    # Pen and writer variety (training/augment.py): shear as a fraction of the width, the
    # width's own zoom range (aspect change), random stroke width, and the share of
    # digits thresholded to two levels. Version 1 was trained without these (0, 0.08, off, 0).
    shear: float = 0.2
    aspect: float = 0.15
    stroke_width: bool = True
    two_level: float = 0.15
    # The share of each batch given that variety; the rest get only rotation, zoom and shift.
    variety: float = 0.5
    # The share of MNIST's 1s also given, as extra digits, a continental flag (and base).
    flagged_ones: float = 1.0
    # The share of the narrow digits also given, as extra digits, a widened copy.
    stretched: float = 0.6
    tensorboard_dir: Path | None = None
    # Limits the training digits (used by smoke tests); None uses them all.
    max_train_samples: int | None = None

    def as_dict(self) -> dict:
        values = dataclasses.asdict(self)
        if self.tensorboard_dir is not None:
            values["tensorboard_dir"] = str(self.tensorboard_dir)
        return values
