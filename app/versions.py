"""Which versions of each style are served: the version policy and the labels.

The policy (`DIGITS_MODEL_VERSIONS`, as in TensorFlow Serving's model config) says, per
style, which versions on disk to keep loaded: the latest (the default), the latest N, all,
or a list. Labels (`stable`, `canary`, ...) name versions; they live in the style's
directory, `models/<style>/labels.json`, so that they change at run time with a file write
(`python -m app.versions`) that every server process sees at its next poll, with no route
to secure and no process to reach. A labelled version is kept loaded whatever the policy
says, and the label `default` picks what requests that name no version get.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

from digit_contract import Style

LABELS_FILE = "labels.json"
DEFAULT_LABEL = "default"
LABEL_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,31}")
VERSION_PATTERN = re.compile(r"0|[1-9][0-9]{0,17}")  # as version directories are named
MAX_LABELS = 32
MAX_LABELS_BYTES = 64 * 1024  # read on every poll: a huge file must not stall the loop


@dataclasses.dataclass(frozen=True)
class VersionPolicy:
    latest: int | None = 1           # keep the N highest versions that load; None: not this
    specific: tuple[int, ...] = ()   # or exactly these versions

    def describe(self) -> str:
        if self.latest is None:
            return ",".join(map(str, self.specific))
        return "latest" if self.latest == 1 else f"latest:{self.latest}"


ALL = VersionPolicy(latest=2**31)


def parse_policies(text: str) -> dict[Style, VersionPolicy]:
    """`sequential=1,2;functional=latest:2;subclassed=all` -> a policy per named style.

    Styles left out serve their latest version. Raises ValueError naming what is wrong.
    """
    policies = {}
    for entry in filter(None, (part.strip() for part in text.split(";"))):
        name, _, spec = entry.partition("=")
        try:
            style = Style(name.strip())
        except ValueError:
            raise ValueError(f"unknown style {name.strip()!r} in {entry!r}") from None
        policies[style] = parse_policy(spec.strip())
    return policies


def parse_policy(spec: str) -> VersionPolicy:
    if spec == "all":
        return ALL
    if spec == "latest":
        return VersionPolicy(latest=1)
    if spec.startswith("latest:"):
        count = spec.removeprefix("latest:")
        if count.isdigit() and int(count) > 0:
            return VersionPolicy(latest=int(count))
    elif spec and all(VERSION_PATTERN.fullmatch(part.strip()) for part in spec.split(",")):
        return VersionPolicy(latest=None,
                             specific=tuple(sorted({int(p) for p in spec.split(",")})))
    raise ValueError(f"version policy {spec!r} is not latest, latest:N, all or a list "
                     "of versions such as 1,2")


def version_number(text: str) -> int | None:
    """A version as a path names it ('3'), or None for anything else ('03', '+3', '3.0')."""
    return int(text) if VERSION_PATTERN.fullmatch(text) else None


def read_labels(style_dir: Path) -> dict[str, int]:
    """The style's labels -> versions; {} when it has no labels file.

    Raises ValueError when the file is not a small JSON object of label -> version.
    """
    path = style_dir / LABELS_FILE
    try:
        with path.open("rb") as file:
            text = file.read(MAX_LABELS_BYTES + 1)
    except FileNotFoundError:
        return {}
    except OSError as error:  # its message would name this machine's path
        raise ValueError(f"{LABELS_FILE} cannot be read ({error.strerror})") from None
    if len(text) > MAX_LABELS_BYTES:
        raise ValueError(f"{LABELS_FILE} is over {MAX_LABELS_BYTES // 1024} KB")
    try:
        labels = json.loads(text)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise ValueError(f"{LABELS_FILE} is not valid JSON ({str(error)[:100]})") from None
    return check_labels(labels)


def check_labels(labels) -> dict[str, int]:
    if not isinstance(labels, dict) or len(labels) > MAX_LABELS:
        raise ValueError(f"{LABELS_FILE} must be an object of at most {MAX_LABELS} labels")
    for label, version in labels.items():
        if not LABEL_PATTERN.fullmatch(label):
            raise ValueError(f"label {label[:40]!r} is not lower-case letters, digits, - "
                             "and _ (at most 32, starting with a letter)")
        if type(version) is not int or not 0 <= version < 10**18:
            raise ValueError(f"label {label!r} must name a version number, not "
                             f"{str(version)[:40]!r}")
    return dict(labels)


def write_labels(style_dir: Path, labels: dict[str, int]) -> None:
    """Replace the style's labels in one rename, so a poll never reads half a file."""
    labels = check_labels(labels)
    temporary = style_dir / f".{LABELS_FILE}.{os.getpid()}"
    with temporary.open("w") as file:
        file.write(json.dumps(labels, indent=2, sort_keys=True) + "\n")
        file.flush()
        os.fsync(file.fileno())  # on disk before it takes the real name
    os.replace(temporary, style_dir / LABELS_FILE)


def main(argv: list[str] | None = None) -> None:
    """`python -m app.versions STYLE [LABEL=VERSION ...] [--remove LABEL ...]`: set labels."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m app.versions", description="Show or change a style's version labels; "
        "running servers pick the change up at their next poll of the model directory.")
    parser.add_argument("style", choices=[s.value for s in Style])
    parser.add_argument("assign", nargs="*", metavar="LABEL=VERSION")
    parser.add_argument("--remove", action="append", default=[], metavar="LABEL")
    parser.add_argument("--replace", action="store_true",
                        help="start from no labels rather than the file's (to repair it)")
    parser.add_argument("--model-dir", type=Path,
                        default=Path(os.environ.get("DIGITS_MODEL_DIR", "models")))
    args = parser.parse_args(argv)
    style_dir = args.model_dir / args.style
    if not style_dir.is_dir():
        parser.error(f"{style_dir} is not a directory (see --model-dir)")
    try:
        labels = {} if args.replace else read_labels(style_dir)
    except ValueError as error:
        parser.error(f"{error}: rewrite it with --replace")
    for assignment in args.assign:
        label, _, version = assignment.partition("=")
        if not VERSION_PATTERN.fullmatch(version):
            parser.error(f"{assignment[:60]!r} is not LABEL=VERSION")
        labels[label] = int(version)
    for label in args.remove:
        labels.pop(label, None)
    if args.assign or args.remove or args.replace:
        try:
            write_labels(style_dir, labels)
        except ValueError as error:
            parser.error(str(error))
    print(json.dumps(labels, sort_keys=True))


if __name__ == "__main__":
    main()
