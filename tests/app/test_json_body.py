"""Large JSON bodies: their long strings are cut out and decoded in windows
(`app.uploads._cut_long_strings`); the answer must be what json.loads and strict base64
give on the whole body. Windows and thresholds are shrunk so that generated bodies of a
few hundred bytes cross every boundary."""

from __future__ import annotations

import base64
import binascii
import json

import pytest
from fastapi.exceptions import RequestValidationError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import scanning, uploads
from app.uploads import UploadError, parse_base64_json

MAX_IMAGES = 8


def reference(body: bytes) -> list[bytes | str] | str:
    """What the body should give: each image's bytes (or "400" for an image that is not
    valid base64, among others), or the request's "400" / "413" / "422"."""
    try:
        document = json.loads(body)
    except ValueError:
        return "400"
    images = document.get("images") if isinstance(document, dict) else None
    if isinstance(images, list) and len(images) > MAX_IMAGES:
        return "413"  # counted before the items are validated
    if not isinstance(images, list) or not images or not all(isinstance(i, str) for i in images):
        return "422"
    decoded = [decode_reference(text) for text in images]
    return "400" if decoded == ["400"] else decoded  # alone, a bad image fails its request


def decode_reference(text: str) -> bytes | str:
    if text.startswith("data:"):
        header, comma, text = text.partition(",")
        if not (comma and header.endswith(";base64")):
            return "400"
    if not text.isascii():
        return "400"
    encoded = text.encode().translate(None, b" \t\r\n")
    stripped = encoded.rstrip(b"=")
    padding = len(encoded) - len(stripped)
    if len(encoded) % 4 or (padding and (padding > 2 or len(stripped) % 4 != 4 - padding)):
        return "400"
    try:
        return binascii.a2b_base64(encoded, strict_mode=True)
    except binascii.Error:
        return "400"


def ours(body: bytes) -> list[bytes | str] | str:
    try:
        return [upload.data if upload.refused is None else "400"
                for upload in parse_base64_json(body, MAX_IMAGES)]
    except UploadError as error:
        return str(error.status_code)
    except RequestValidationError:  # FastAPI answers it 422
        return "422"


@pytest.fixture
def small_windows(monkeypatch):
    monkeypatch.setattr(scanning, "WINDOW", 16)
    monkeypatch.setattr(uploads, "LARGE_JSON_BYTES", 0)
    monkeypatch.setattr(uploads, "LONG_STRING_BYTES", 8)


def spaced(text: str, every: int) -> str:
    return " ".join(text[i:i + every] for i in range(0, len(text), every)) if every else text


IMAGE_TEXT = st.builds(
    lambda pieces, url, every, tail: ("data:image/png;base64," if url else "")
    + spaced("".join(base64.b64encode(p).decode() for p in pieces), every) + tail,
    # Two encodings run together put padding in the middle: invalid, in any window.
    st.lists(st.binary(max_size=80), min_size=1, max_size=2), st.booleans(),
    st.sampled_from([0, 0, 3, 76]),
    # Mostly valid; sometimes a flaw at the end that one of the two readings might miss.
    st.sampled_from([""] * 12 + ["=", "==", "A", "=A", "\n", "\\n", "\t", "!", "é", "\\u0000"]))


@st.composite
def bodies(draw) -> bytes:
    texts = draw(st.lists(IMAGE_TEXT, max_size=MAX_IMAGES + 2))
    extra = draw(st.sampled_from(["", ', "note": "' + "x" * 40 + '"', ', "n": 1']))
    body = '{"images": [' + ", ".join(f'"{t}"' for t in texts) + "]" + extra + "}"
    cut = draw(st.sampled_from([None] * 8 + [0.5, 0.9]))  # a truncated body, sometimes
    if cut:
        body = body[: int(len(body) * cut)]
    return body.encode()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(body=bodies())
def test_windowed_parsing_agrees_with_json_loads(small_windows, body):
    assert ours(body) == reference(body)


def test_a_nul_escape_in_a_large_body_is_an_image_not_a_placeholder(small_windows):
    # "\u0000" needs a backslash, which makes the whole body go to json.loads: never read
    # as one of the cut strings.
    body = b'{"images": ["\\u00000", "' + base64.b64encode(b"x" * 30) + b'"]}'
    assert ours(body) == ["400", b"x" * 30]  # an image that is not base64, beside a good one


def test_a_data_url_without_a_comma_is_refused_the_same_way_in_any_body(small_windows):
    # Found by an attack: cut out and read in windows it was "not a base64 URL", read
    # whole it was an empty image.
    text = "data:" + "x" * 40 + ";base64"
    good = base64.b64encode(b"x" * 30).decode()
    for body in (json.dumps({"images": [text, good]}).encode(),
                 json.dumps({"images": [text, good], "note": "\\"}).encode()):
        [refused, _] = parse_base64_json(body, MAX_IMAGES)
        assert refused.refused.startswith("a data: URL must be base64")


def test_a_nine_megabyte_image_decodes_in_windows():
    data = bytes(range(256)) * 26_000  # 6.6 MB
    body = b'{"images": ["data:image/png;base64,' + base64.b64encode(data) + b'"]}'
    assert len(body) > uploads.LARGE_JSON_BYTES
    assert [upload.data for upload in parse_base64_json(body, MAX_IMAGES)] == [data]


def test_a_raw_line_break_in_a_long_string_is_invalid_json():
    body = b'{"images": ["' + b"QUFB" * 100_000 + b'\nQUFB"]}'
    with pytest.raises(UploadError) as raised:
        parse_base64_json(body, MAX_IMAGES)
    assert raised.value.status_code == 400 and "JSON" in raised.value.detail


def test_padding_that_ends_a_window_is_still_padding_in_the_middle(small_windows):
    # The first encoding fills the first 16-character window exactly, "==" and all: each
    # window alone is valid base64, the string is not.
    first, second = base64.b64encode(b"x" * 10), base64.b64encode(b"y" * 30)
    assert len(first) == scanning.WINDOW and first.endswith(b"==")
    body = b'{"images": ["' + first + second + b'"]}'
    assert reference(body) == ours(body) == "400"


def test_padding_followed_by_spaces_past_a_window_is_still_valid(small_windows):
    text = base64.b64encode(b"x" * 10).decode()  # ends with "=="
    body = ('{"images": ["' + text + " " * 40 + '"]}').encode()
    assert ours(body) == reference(body) == [b"x" * 10]


def test_a_data_url_with_a_long_header_is_read_as_json_loads_reads_it(small_windows):
    url = "data:image/png;" + "q=1;" * 100 + "base64," + base64.b64encode(b"y" * 30).decode()
    body = ('{"images": ["' + url + '"]}').encode()
    assert ours(body) == reference(body) == [b"y" * 30]
