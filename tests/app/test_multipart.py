"""The hand-written multipart parser against python-multipart's, on generated bodies."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from python_multipart.multipart import MultipartParser

from app.uploads import UploadError, parse_multipart

TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=12)
# Contents that look like the framing: CR, LF, dashes and the boundary's own letters.
CONTENT = st.binary(max_size=200) | st.lists(
    st.sampled_from([b"\r", b"\n", b"\r\n", b"--", b"-", b"x", b"\x00", b"\xff", b"bound"]),
    max_size=30).map(b"".join)
PART = st.tuples(st.sampled_from(["file", "file", "note"]), st.none() | TOKEN, CONTENT)


def encode(parts: list[tuple[str, str | None, bytes]], boundary: bytes) -> bytes:
    body = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}.png"'
        body += (b"--" + boundary + b"\r\nContent-Disposition: " + disposition.encode()
                 + b"\r\nContent-Type: image/png\r\n\r\n" + content + b"\r\n")
    return body + b"--" + boundary + b"--\r\n"


def reference_parse(body: bytes, boundary: bytes) -> list[tuple[bytes | None, bytes]]:
    """python-multipart's reading: (filename, content) of each part named `file`."""
    parts, headers, field = [], [], [b""]
    current = {}

    def on_part_begin():
        current.update(data=b"", headers={})

    def on_header_field(data, start, end):
        field[0] += data[start:end]

    def on_header_value(data, start, end):
        headers.append((field[0].lower(), data[start:end]))
        field[0] = b""

    def on_part_data(data, start, end):
        current["data"] += data[start:end]

    def on_part_end():
        disposition = dict(headers).get(b"content-disposition", b"")
        name = disposition.split(b'name="')[1].split(b'"')[0]
        filename = (disposition.split(b'filename="')[1].split(b'"')[0]
                    if b"filename=" in disposition else None)
        if name == b"file":
            parts.append((filename, current["data"]))
        headers.clear()

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field,
        "on_header_value": on_header_value, "on_part_data": on_part_data,
        "on_part_end": on_part_end})
    parser.write(body)
    parser.finalize()
    return parts


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(PART, max_size=6), boundary=TOKEN)
def test_the_parser_reads_what_python_multipart_reads(parts, boundary):
    delimiter = b"--" + boundary.encode()
    body = encode(parts, boundary.encode())
    # A boundary must not occur inside a part: that is the encoder's promise.
    if any(delimiter in b"\r\n" + content for _, _, content in parts):
        return
    ours = [(upload.label, upload.data) for upload in parse_multipart(body, boundary.encode(), 64)]
    theirs = reference_parse(body, boundary.encode())
    assert [data for _, data in ours] == [data for _, data in theirs]
    for (label, _), (filename, _) in zip(ours, theirs, strict=True):
        assert (filename is None) == ("(" not in label)
        assert filename is None or filename.decode() in label


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(PART, max_size=4), boundary=TOKEN, cut=st.integers(0, 10_000),
       junk=st.binary(max_size=20))
def test_a_damaged_body_is_a_400_or_413_never_anything_else(parts, boundary, cut, junk):
    body = encode(parts, boundary.encode())
    damaged = body[: cut % (len(body) + 1)] + junk + body[cut % (len(body) + 1):][len(junk):]
    try:
        uploads = parse_multipart(damaged, boundary.encode(), 64)
    except UploadError as error:
        assert error.status_code in (400, 413)
    else:
        assert all(isinstance(upload.data, bytes) for upload in uploads)


def test_a_body_of_a_million_empty_parts_is_refused_at_the_part_limit():
    with pytest.raises(UploadError) as refused:
        parse_multipart(b"--a\r\nX: y\r\n\r\n\r\n" * 1_000_000, b"a", 256)
    assert refused.value.status_code == 413


def test_a_part_header_that_never_ends_is_refused_without_reading_on():
    body = (b'--a\r\nContent-Disposition: form-data; name="file"; filename="'
            + b"n" * 9_000_000 + b'.png"\r\n\r\ndata')
    # Truncated too, but judged by its first part: the 9 MB after it are never searched.
    with pytest.raises(UploadError, match="no header end") as refused:
        parse_multipart(body, b"a", 256)
    assert refused.value.status_code == 400


def test_an_epilogue_after_the_closing_delimiter_is_ignored():
    body = b'--a\r\nContent-Disposition: form-data; name="file"\r\n\r\nxy\r\n--a--\r\n--a\r\n'
    assert [upload.data for upload in parse_multipart(body, b"a", 4)] == [b"xy"]


@settings(max_examples=200, deadline=None)
@given(parts=st.lists(PART, min_size=1, max_size=4), boundary=TOKEN, cut=st.integers(0, 2000))
def test_no_start_of_an_acceptable_body_is_refused(parts, boundary, cut):
    body = encode(parts, boundary.encode())
    if any(b"--" + boundary.encode() in b"\r\n" + content for _, _, content in parts):
        return
    parse_multipart(body, boundary.encode(), 64)
    parse_multipart(body[:cut], boundary.encode(), 64, complete=False)  # raises nothing


def test_a_start_whose_part_header_never_ends_is_refused():
    start = b'--a\r\nContent-Disposition: form-data; name="file"; filename="' + b"n" * 300_000
    with pytest.raises(UploadError, match="no header end"):
        parse_multipart(start, b"a", 64, complete=False)
    parse_multipart(start[:5000], b"a", 64, complete=False)  # may still end: no verdict
