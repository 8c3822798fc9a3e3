"""Reading the images out of a prediction request, within the configured limits.

Three body forms are accepted: multipart/form-data with parts named `file`, one raw encoded
image (`image/*` or `application/octet-stream`), or JSON `{"images": ["<base64>", ...]}`.
"""

from __future__ import annotations

import asyncio
import binascii
import dataclasses
import functools
import itertools
import json
from typing import TYPE_CHECKING

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError
from python_multipart.multipart import parse_options_header as _parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from app.scanning import find_all

if TYPE_CHECKING:
    from app.decoding import ImageHeader

SUPPORTED_TYPES = "multipart/form-data, image/*, application/octet-stream or application/json"

# Bodies at least this large are parsed in a thread, off the event loop.
PARSE_IN_THREAD_BYTES = 256 * 1024

# A part's headers are a name, a file name and a type: nginx allows 8 KB per header line.
MAX_PART_HEADER_BYTES = 8 * 1024

# How many of a JSON body's validation problems an error lists.
MAX_REPORTED_PROBLEMS = 5

# A client sends the same Content-Type (and often the same part headers) every time, and
# parsing one costs more than the rest of reading a small upload. Only short values are
# cached, so the cache holds at most 256 x 256 bytes of what clients sent.
_cached_options_header = functools.lru_cache(maxsize=256)(_parse_options_header)


def parse_options_header(value: bytes | str) -> tuple[bytes, dict[bytes, bytes]]:
    """A header's value and its options (results are shared: don't modify them)."""
    if len(value) <= 256:
        return _cached_options_header(value)
    return _parse_options_header(value)


class ClientGone(Exception):
    """The client disconnected before its request was read (logged as 499, not a 5xx)."""


class UploadError(Exception):
    """A request whose body can't be used; carries the HTTP status and a message."""

    def __init__(self, status_code: int, detail: str):
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class Upload:
    label: str  # how error messages name this image, e.g. "file #2 ('seven.png')"
    data: bytes
    header: ImageHeader | None = None  # once inspected (app.decoding)


class Base64Images(BaseModel):
    images: list[str] = Field(min_length=1, description="Base64 images; data: URLs accepted.")


async def read_uploads(request: Request, max_bytes: int, max_images: int,
                       timeout_s: float = 60.0) -> list[Upload]:
    media_type, options = parse_options_header(request.headers.get("content-type", ""))
    media_type = media_type.decode("latin-1").lower()
    if not media_type:
        raise UploadError(415, f"Missing Content-Type; send {SUPPORTED_TYPES}.")
    if not (media_type in ("multipart/form-data", "application/octet-stream", "application/json")
            or media_type.startswith("image/") or media_type.endswith("+json")):
        raise UploadError(415, f"Unsupported Content-Type '{media_type}'; send {SUPPORTED_TYPES}.")
    boundary = options.get(b"boundary")
    if media_type == "multipart/form-data" and not 0 < len(boundary or b"") <= 70:
        raise UploadError(400, "multipart/form-data needs a boundary parameter of 1 to 70 "
                               "characters.")
    body = await read_body(request, max_bytes, timeout_s)
    if len(body) >= PARSE_IN_THREAD_BYTES:
        return await run_in_threadpool(parse_body, body, media_type, boundary, max_images)
    return parse_body(body, media_type, boundary, max_images)


def parse_body(body: bytes, media_type: str, boundary: bytes | None,
               max_images: int) -> list[Upload]:
    if media_type == "multipart/form-data":
        uploads = parse_multipart(body, boundary, max_images)
    elif media_type.endswith("json"):
        uploads = parse_base64_json(body, max_images)
    else:
        uploads = [Upload("request body", body)]
    if not uploads:
        raise UploadError(400, "No image in the request: send parts named 'file'.")
    return uploads


async def read_body(request: Request, max_bytes: int, timeout_s: float = 60.0) -> bytes:
    """The request body, refused with 413 as soon as it passes `max_bytes`, and with 408 if
    it takes over `timeout_s` to arrive (a client trickling bytes holds a connection)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise UploadError(413, _too_large(int(declared), max_bytes))
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise UploadError(413, _too_large(size, max_bytes, at_least=True))
                chunks.append(chunk)
    except ClientDisconnect as error:
        raise ClientGone(f"the client went away after {size:,} bytes") from error
    except TimeoutError as error:
        raise UploadError(408, f"The body took over {timeout_s:g} s to arrive ({size:,} bytes "
                               "by then; DIGITS_BODY_TIMEOUT_S).") from error
    return b"".join(chunks)


def _too_large(size: int, limit: int, at_least: bool = False) -> str:
    return (f"Request body is {'over ' if at_least else ''}{size:,} bytes; the limit is "
            f"{limit:,} (DIGITS_MAX_UPLOAD_BYTES).")


def _too_many(max_images: int) -> UploadError:
    return UploadError(413, f"More than {max_images} images in one request "
                            "(DIGITS_MAX_IMAGES_PER_REQUEST); split it.")


def parse_multipart(body: bytes, boundary: bytes, max_images: int) -> list[Upload]:
    """The parts named `file`, in order; other fields are ignored.

    The whole body is already in memory (and bounded), so the parts are found by searching
    for the boundary: a few C-level byte operations instead of a streaming parser's
    callback per header and chunk, which matters for many small images.
    """
    delimiter = b"--" + boundary
    limit = 2 * max_images + 16  # each part is a few objects: a bounded number of them
    positions = find_all(body, delimiter, limit)
    if len(positions) > limit:
        raise UploadError(413, f"The multipart body has over {limit} parts; send at most "
                               f"{max_images} images (DIGITS_MAX_IMAGES_PER_REQUEST).")
    # Before the first delimiter is the preamble; the last must be the closing "--".
    if not positions or body[positions[-1] + len(delimiter):][:2] != b"--":
        raise UploadError(400, "Malformed multipart body: no closing boundary (truncated?).")
    uploads = []
    for start, end in itertools.pairwise(positions):
        start += len(delimiter)
        if body[start: start + 2] != b"\r\n" or body[end - 2: end] != b"\r\n":
            raise UploadError(400, "Malformed multipart body: a part is not framed by CRLF.")
        header_end = body.find(b"\r\n\r\n", start + 2, min(end, start + MAX_PART_HEADER_BYTES))
        if header_end < 0:
            raise UploadError(400, "Malformed multipart body: a part has no header end within "
                                   f"{MAX_PART_HEADER_BYTES:,} bytes.")
        name, filename = _disposition(body[start + 2: header_end])
        if name != b"file":
            continue
        if len(uploads) == max_images:
            raise _too_many(max_images)
        label = f"file #{len(uploads) + 1}"
        if filename:
            label += f" ('{filename[:100].decode('utf-8', 'replace')}')"
        uploads.append(Upload(label, body[header_end + 4: end - 2]))
    return uploads


def _disposition(head: bytes) -> tuple[bytes | None, bytes | None]:
    """The `name` and `filename` of a part's Content-Disposition header."""
    for line in head.split(b"\r\n"):
        field, _, value = line.partition(b":")
        if field.strip().lower() == b"content-disposition":
            _, options = parse_options_header(value.strip())
            return options.get(b"name"), options.get(b"filename")
    return None, None


# A valid body is {"images": ["<base64>", ...]}: two brackets, and a comma between images
# (and one in each data: URL). Base64 holds neither brackets nor commas, so counting them
# bounds what json.loads would build before it builds anything: a few MB of "[{},{},...]"
# would otherwise become millions of Python objects.
MAX_JSON_BRACKETS = 16
MAX_NON_ASCII_JSON_BYTES = 64 * 1024


def parse_base64_json(body: bytes, max_images: int) -> list[Upload]:
    if len(body) > MAX_NON_ASCII_JSON_BYTES and not body.isascii():
        # Base64 is ASCII; a large body that isn't would only make json.loads build a huge
        # string (holding the interpreter lock all the while) to be refused afterwards.
        raise UploadError(400, f"A JSON body over {MAX_NON_ASCII_JSON_BYTES // 1024} KB must "
                               "be ASCII: base64 images are.")
    if body.count(b"[") + body.count(b"{") > MAX_JSON_BRACKETS:
        raise UploadError(400, 'The JSON body nests too many arrays or objects; send '
                               '{"images": ["<base64>", ...]}.')
    if body.count(b",") > 2 * max_images + 16:
        raise _too_many(max_images)
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as error:  # bad JSON, bad UTF-8, huge numbers
        raise UploadError(400, f"Body is not valid JSON: {str(error)[:200]}") from error
    images = document.get("images") if isinstance(document, dict) else None
    if isinstance(images, list) and len(images) > max_images:
        raise _too_many(max_images)
    try:
        payload = Base64Images.model_validate(document)
    except ValidationError as error:
        problems = error.errors(include_url=False, include_input=False)
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in problems[:MAX_REPORTED_PROBLEMS]]
        ) from error
    return [Upload(f"images[{i}]", _decode_base64(text, f"images[{i}]"))
            for i, text in enumerate(payload.images)]


def _decode_base64(text: str, label: str) -> bytes:
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if not header.endswith(";base64"):
            raise UploadError(400, f"{label}: a data: URL must be base64 "
                                   "(data:image/png;base64,...).")
    try:
        encoded = text.encode("ascii")
    except UnicodeEncodeError as error:
        raise UploadError(400, f"{label} is not valid base64: it holds non-ASCII "
                               "characters.") from error
    # Line breaks and spaces are allowed (MIME wraps base64); dropped in one C call.
    encoded = encoded.translate(None, b" \t\r\n")
    data = encoded.rstrip(b"=")
    padding = len(encoded) - len(data)
    # Whole 4-character groups, padded only as far as the last group needs.
    if len(encoded) % 4 or (padding and (padding > 2 or len(data) % 4 != 4 - padding)):
        raise UploadError(400, f"{label} is not valid base64: {len(data)} characters with "
                               f"{padding} '=' of padding.")
    try:
        return binascii.a2b_base64(encoded, strict_mode=True)  # nothing outside base64
    except (binascii.Error, ValueError) as error:
        raise UploadError(400, f"{label} is not valid base64: {error}") from error
