"""The README's client examples for the standard protocols, run as written (each in its own
process: kserve and tritonclient.grpc cannot share one) against `python -m app` with gRPC,
the addresses swapped for the test server's."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from tests.images import draw_one, encode
from tests.servers import free_port, start_server

EXAMPLE = re.compile(r"<!-- example: ([\w-]+) -->\n```python\n(.*?)```", re.S)
EXAMPLES = dict(EXAMPLE.findall((REPO_ROOT / "README.md").read_text()))
# What each example prints for the drawn '1' it is given.
EXPECTED = {"tritonclient": ["image: [1]", "tensor: [1]"] * 2,
            "kserve": ["v2: [1]", "v1: [1]"],
            "tensorflow-serving": ["digit: 1"]}


def test_every_protocol_has_its_example():
    assert set(EXAMPLES) == set(EXPECTED)


@pytest.fixture(scope="module")
def ports():
    grpc_port = free_port()
    server, base = start_server(REPO_ROOT / "models", access_log="false", grpc_port=grpc_port)
    try:
        yield base.removeprefix("http://"), f"127.0.0.1:{grpc_port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_example_runs_as_written(name, ports, tmp_path):
    # Looked up, not imported: importing kserve here would register its copy of the
    # `inference` protos in this process, where tritonclient.grpc registers its own.
    needs = {"tritonclient": "tritonclient.grpc", "kserve": "kserve"}.get(name)
    if needs and importlib.util.find_spec(needs.split(".")[0]) is None:
        pytest.skip(f"{needs} is not installed")
    http, grpc = ports
    (tmp_path / "digit.png").write_bytes(encode(draw_one()))
    code = EXAMPLES[name].replace("127.0.0.1:8000", http).replace("127.0.0.1:8001", grpc)
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.splitlines() == EXPECTED[name]
