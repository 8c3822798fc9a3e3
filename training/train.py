"""Training one model style: data pipeline, callbacks, fit, evaluation."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from digit_contract import Style, scale_pixels
from training.architectures import ARCHITECTURES, LayerOptions
from training.augment import make_augment, with_flagged_ones, with_stretched_digits
from training.config import TrainingConfig
from training.data import Digits


@dataclasses.dataclass(frozen=True)
class TrainingResult:
    model: keras.Model
    history: dict[str, list[float]]
    metrics: dict[str, float | int]


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 [n, 28, 28] digits to the float32 [n, 28, 28, 1] the models take."""
    return scale_pixels(images)[..., np.newaxis]


def make_datasets(digits: Digits, config: TrainingConfig) -> tuple[tf.data.Dataset, ...]:
    x_train, y_train = digits.x_train, digits.y_train
    if config.max_train_samples is not None:
        x_train, y_train = x_train[: config.max_train_samples], y_train[: config.max_train_samples]
    if config.augment and config.flagged_ones > 0:
        x_train, y_train = with_flagged_ones(x_train, y_train, np.random.default_rng(config.seed),
                                             config.flagged_ones)
    if config.augment and config.stretched > 0:
        x_train, y_train = with_stretched_digits(
            x_train, y_train, np.random.default_rng(config.seed + 1), config.stretched)
    train = tf.data.Dataset.from_tensor_slices((to_model_input(x_train), y_train))
    train = train.shuffle(len(x_train), seed=config.seed, reshuffle_each_iteration=True)
    train = train.batch(config.batch_size)
    if config.augment:
        augment = make_augment(config)
        train = train.map(lambda x, y: (augment(x), y),
                          num_parallel_calls=tf.data.AUTOTUNE)
    train = train.prefetch(tf.data.AUTOTUNE)
    val = tf.data.Dataset.from_tensor_slices((to_model_input(digits.x_val), digits.y_val))
    return train, val.batch(512).prefetch(tf.data.AUTOTUNE)


def learning_rate_schedule(config: TrainingConfig):
    def schedule(epoch: int, lr: float) -> float:
        decayed_epochs = max(0, epoch - config.warm_epochs + 1)
        return float(config.learning_rate * config.lr_decay**decayed_epochs)

    return schedule


def make_callbacks(config: TrainingConfig, checkpoint_path: Path) -> list[keras.callbacks.Callback]:
    """Every callback of a run, configured in one place."""
    callbacks = [
        keras.callbacks.ModelCheckpoint(str(checkpoint_path), monitor="val_accuracy",
                                        save_best_only=True, save_weights_only=True),
        keras.callbacks.EarlyStopping(monitor="val_accuracy",
                                      patience=config.early_stopping_patience,
                                      restore_best_weights=True),
        keras.callbacks.LearningRateScheduler(learning_rate_schedule(config)),
    ]
    if config.tensorboard_dir is not None:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(config.tensorboard_dir)))
    return callbacks


def train(style: Style, digits: Digits, config: TrainingConfig,
          options: LayerOptions = LayerOptions()) -> TrainingResult:
    """Build, compile and fit one style; return the best-validation model and its figures."""
    keras.utils.set_random_seed(config.seed)
    model = ARCHITECTURES[style](options)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    train_data, val_data = make_datasets(digits, config)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="digits-checkpoint-") as scratch:
        checkpoint = Path(scratch) / "best.weights.h5"
        # shuffle=False: the dataset already reshuffles itself every epoch.
        fit = model.fit(train_data, validation_data=val_data, epochs=config.epochs,
                        callbacks=make_callbacks(config, checkpoint), shuffle=False, verbose=2)
        if checkpoint.exists():
            model.load_weights(checkpoint)
    seconds = time.perf_counter() - started
    history = {name: [float(v) for v in values] for name, values in fit.history.items()}
    metrics = evaluate(model, digits)
    metrics.update(epochs_run=len(history["loss"]),
                   best_epoch=int(np.argmax(history["val_accuracy"])) + 1,
                   training_seconds=round(seconds, 1))
    return TrainingResult(model=model, history=history, metrics=metrics)


def evaluate(model: keras.Model, digits: Digits) -> dict[str, float]:
    val_loss, val_accuracy = model.evaluate(to_model_input(digits.x_val), digits.y_val,
                                            batch_size=512, verbose=0)
    metrics = {"val_accuracy": round(float(val_accuracy), 5), "val_loss": round(float(val_loss), 5)}
    if digits.x_test is not None:
        test_loss, test_accuracy = model.evaluate(to_model_input(digits.x_test), digits.y_test,
                                                  batch_size=512, verbose=0)
        metrics.update(test_accuracy=round(float(test_accuracy), 5),
                       test_loss=round(float(test_loss), 5))
    return metrics
