"""Command line: `python -m training --style all --data ../shared/data/mnist-train.npz`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from digit_contract import Style
from training.config import TrainingConfig
from training.data import DATA_ENV_VAR, DataError, load_digits


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = TrainingConfig()
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Train the MNIST CNN styles and export each as the next SavedModel version.",
    )
    parser.add_argument("--style", choices=[*Style, "all"], default="all")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--data", type=Path, default=None,
                        help=f"mnist.npz or a folder of IDX files (default: ${DATA_ENV_VAR}, "
                             "then keras.datasets.mnist)")
    parser.add_argument("--out", type=Path, default=Path("models"))
    parser.add_argument("--val-size", type=int, default=defaults.val_size)
    parser.add_argument("--tensorboard", type=Path, default=None, metavar="DIR")
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--max-train-samples", type=int, default=None,
                        help="train on at most this many digits (for quick checks)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    styles = list(Style) if args.style == "all" else [Style(args.style)]
    try:
        digits = load_digits(args.data, args.val_size)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # Heavy imports after argument and data checks, so mistakes are reported quickly.
    from training.export import export_version
    from training.train import train

    rows = []
    for style in styles:
        config = TrainingConfig(
            epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
            val_size=args.val_size, learning_rate=args.learning_rate,
            augment=not args.no_augment, max_train_samples=args.max_train_samples,
            tensorboard_dir=args.tensorboard / style.value if args.tensorboard else None,
        )
        print(f"\n=== {style.value}: {len(digits.x_train)} training digits, "
              f"{len(digits.x_val)} held out ===", flush=True)
        result = train(style, digits, config)
        version_dir = export_version(
            result.model, style, args.out,
            extra_metadata={
                "training": {**config.as_dict(), "optimizer": "adam",
                             "loss": "sparse_categorical_crossentropy"},
                "metrics": result.metrics,
                "history": result.history,
                "data": {"source": digits.source, "sha256": digits.sha256,
                         "train_samples": min(len(digits.x_train),
                                              config.max_train_samples or len(digits.x_train)),
                         "val_samples": len(digits.x_val),
                         "test_samples": 0 if digits.x_test is None else len(digits.x_test)},
            },
            history=result.history,
        )
        rows.append((style.value, version_dir.name, result.model.count_params(), result.metrics))
        print(f"wrote {version_dir}", flush=True)
    print_table(rows)
    return 0


def print_table(rows: list[tuple]) -> None:
    header = f"{'style':<11} {'version':>7} {'params':>8} {'val_acc':>8} {'val_loss':>8} " \
             f"{'epochs':>6} {'seconds':>8}"
    print("\n" + header + "\n" + "-" * len(header))
    for style, version, params, m in rows:
        print(f"{style:<11} {version:>7} {params:>8,} {m['val_accuracy']:>8.4f} "
              f"{m['val_loss']:>8.4f} {m['epochs_run']:>6} {m['training_seconds']:>8.1f}")


if __name__ == "__main__":
    sys.exit(main())
