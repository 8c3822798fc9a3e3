"""`python -m training.litert [MODEL_DIR]`: give every version that lacks one its LiteRT file.

New exports write `model.tflite` themselves; this converts versions exported before that
(the committed ones were converted so), in place and atomically.
"""

from __future__ import annotations

import sys
from pathlib import Path

from digit_contract import Style, list_versions
from training.export import add_litert


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    model_dir = Path(argv[0] if argv else "models")
    for style in Style:
        for version in list_versions(model_dir / style.value):
            version_dir = model_dir / style.value / str(version)
            print(f"{version_dir}: {'converted' if add_litert(version_dir) else 'has one'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
