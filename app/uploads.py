"""Reading the images out of a prediction request, within the configured limits.

Three body forms are accepted: multipart/form-data with parts named `file`, one raw encoded
image (`image/*` or `application/octet-stream`), or JSON `{"images": ["<base64>", ...]}`.
"""

from __future__ import annotations

import asyncio
import binascii
import dataclasses
import functools
import json
from collections.abc import Callable
from typing import TYPE_CHECKING

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError
from python_multipart.multipart import parse_options_header as _parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from app import scanning
from app.scanning import find_all

if TYPE_CHECKING:
    from app.decoding import ImageHeader

SUPPORTED_TYPES = "multipart/form-data, image/*, application/octet-stream or application/json"

# Bodies at least this large are parsed in a thread, off the event loop.
PARSE_IN_THREAD_BYTES = 256 * 1024

# A large body's first 256 KB are checked before the rest is read (see read_body): enough
# for a part header (8 KB), a JSON body's count of commas for 64 images, and the structure
# of an image's first hundred chunks or scans. The server's extension that gives them:
BODY_START = "digits.body_start"

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
        self.close_connection = status_code == 408  # the rest isn't worth waiting for


class ItemError(UploadError):
    """One image of a request could not be read before decoding (bad base64). Alone in its
    request it fails the request; among others it gets its own error entry."""

    def __init__(self, label: str, reason: str):
        super().__init__(400, f"{label}: {reason}")
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Upload:
    label: str  # how error messages name this image, e.g. "file #2 ('seven.png')"
    data: bytes
    header: ImageHeader | None = None  # once inspected (app.decoding)
    refused: str | None = None  # why it could not be read at all (an ItemError's reason)


class Base64Images(BaseModel):
    images: list[str] = Field(min_length=1, description="Base64 images; data: URLs accepted.")


async def read_uploads(request: Request, max_bytes: int, max_images: int,
                       timeout_s: float = 60.0,
                       inspect_image: Callable[[bytes], None] | None = None) -> list[Upload]:
    """The images of a prediction request. `inspect_image` refuses (with an UploadError) an
    image from its first bytes; it is given a large single-image body's first 256 KB before
    the rest is read (see read_body)."""
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
    body = await read_body(request, max_bytes, timeout_s, functools.partial(
        check_prefix, media_type=media_type, boundary=boundary, max_images=max_images,
        inspect_image=inspect_image))
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


async def read_body(request: Request, max_bytes: int, timeout_s: float = 60.0,
                    check_prefix: Callable[[bytes], None] | None = None) -> bytes:
    """The request body, refused with 413 as soon as it passes `max_bytes`, and with 408 if
    it takes over `timeout_s` to arrive (a client trickling bytes holds a connection).

    Under `python -m app` a large body's first 256 KB can be had before the rest is
    read (`app.connections.BodyStart`): `check_prefix` judges them (in a thread), so that a
    body whose start already shows it bad is refused without being read whole.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise UploadError(413, _too_large(int(declared), max_bytes))
    chunks, size = [], 0
    body_start = request.scope.get("extensions", {}).get(BODY_START)
    try:
        async with asyncio.timeout(timeout_s):
            if body_start is not None:
                # Called whether or not there is a check: the protocol holds a large body
                # at its first bytes until the app asks for them.
                prefix = await body_start()
                if prefix is not None and check_prefix is not None:
                    await _refuse_by_start(check_prefix, prefix)
                del prefix  # not held while the rest arrives
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise UploadError(413, _too_large(size, max_bytes, at_least=True))
                if chunk:  # the stream ends with an empty one
                    chunks.append(chunk)
    except ClientDisconnect as error:
        raise ClientGone(f"the client went away after {size:,} bytes") from error
    except TimeoutError as error:
        raise UploadError(408, f"The body took over {timeout_s:g} s to arrive ({size:,} bytes "
                               "by then; DIGITS_BODY_TIMEOUT_S).") from error
    # The protocol (app.connections) hands a body over whole: joining it again would copy
    # it for nothing.
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _refuse_by_start(check: Callable[[bytes], None], prefix: bytes) -> None:
    try:
        await run_in_threadpool(check, prefix)
    except UploadError as error:
        # A malformed start (400) is no client's honest mistake: its answer goes out and
        # the connection closes, the rest of the body unread. Too big, too many or the
        # wrong format (413, 415) can be a person's mistake: that answer is read after the
        # upload, as usual.
        error.close_connection = error.status_code == 400
        raise


def check_prefix(prefix: bytes, media_type: str, boundary: bytes | None, max_images: int,
                 inspect_image: Callable[[bytes], None] | None) -> None:
    """Raise the UploadError the whole body would get, where its first bytes already show
    it; return when they don't (most bodies). Each check only refuses what the same check
    refuses in the whole body."""
    if media_type == "multipart/form-data":
        parse_multipart(prefix, boundary, max_images, complete=False)
    elif media_type.endswith("json"):
        _check_json_counts(prefix, max_images)
    elif inspect_image is not None:
        inspect_image(prefix)


def _too_large(size: int, limit: int, at_least: bool = False) -> str:
    return (f"Request body is {'over ' if at_least else ''}{size:,} bytes; the limit is "
            f"{limit:,} (DIGITS_MAX_UPLOAD_BYTES).")


def _too_many(max_images: int) -> UploadError:
    return UploadError(413, f"More than {max_images} images in one request "
                            "(DIGITS_MAX_IMAGES_PER_REQUEST); split it.")


def parse_multipart(body: bytes, boundary: bytes, max_images: int,
                    complete: bool = True) -> list[Upload]:
    """The parts named `file`, in order; other fields are ignored. With `complete` False,
    `body` is the start of one: what follows may be still to come, and only errors its
    bytes already show are raised.

    The whole body is already in memory (and bounded), so the parts are found by searching
    for the boundary: a few C-level byte operations instead of a streaming parser's
    callback per header and chunk, which matters for many small images. Each part is
    checked before the next delimiter is searched for, so a body that goes wrong early
    (a part header that never ends) is refused without searching the rest of it.
    """
    delimiter = b"--" + boundary
    limit = 2 * max_images + 16  # each part is a few objects: a bounded number of them
    uploads: list[Upload] = []
    parts = 0
    position = scanning.find(body, delimiter)  # before it is the preamble
    while position >= 0:
        start = position + len(delimiter)
        if not complete and start + 2 > len(body):
            return uploads
        if body[start: start + 2] == b"--":
            return uploads  # the closing delimiter; what follows is an epilogue
        parts += 1
        if parts >= limit:
            raise UploadError(413, f"The multipart body has over {limit} parts; send at "
                                   f"most {max_images} images (DIGITS_MAX_IMAGES_PER_REQUEST).")
        if body[start: start + 2] != b"\r\n":
            raise _not_framed()
        header_end = body.find(b"\r\n\r\n", start + 2, start + MAX_PART_HEADER_BYTES)
        if header_end < 0:
            if not complete and start + MAX_PART_HEADER_BYTES > len(body):
                return uploads  # the header may end in the bytes still to come
            raise _no_header_end()
        position = scanning.find(body, delimiter, start)
        if 0 <= position < header_end + 4:
            raise _no_header_end()
        if position < 0:
            break
        if body[position - 2: position] != b"\r\n":
            raise _not_framed()
        name, filename = _disposition(body[start + 2: header_end])
        if name != b"file":
            continue
        if len(uploads) == max_images:
            raise _too_many(max_images)
        label = f"file #{len(uploads) + 1}"
        if filename:
            label += f" ('{filename[:100].decode('utf-8', 'replace')}')"
        uploads.append(Upload(label, body[header_end + 4: position - 2]))
    if not complete:
        return uploads
    raise UploadError(400, "Malformed multipart body: no closing boundary (truncated?).")


def _no_header_end() -> UploadError:
    return UploadError(400, "Malformed multipart body: a part has no header end within "
                            f"{MAX_PART_HEADER_BYTES:,} bytes.")


def _not_framed() -> UploadError:
    return UploadError(400, "Malformed multipart body: a part is not framed by CRLF.")


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

# json.loads and base64 decoding hold the interpreter lock from start to end: 40 to 80 ms
# for a 9 MB body here, during which the process's event loop, and so every other request
# of it, stands still. In a body this large the long strings (the images) are cut out
# before json.loads sees it, and decoded a window at a time.
LARGE_JSON_BYTES = 256 * 1024
LONG_STRING_BYTES = 1024
_CONTROL_BYTES = bytes(range(32))  # never raw inside a JSON string


def parse_base64_json(body: bytes, max_images: int) -> list[Upload]:
    _check_json_counts(body, max_images)
    skeleton, long_strings = body, []
    if len(body) >= LARGE_JSON_BYTES:
        skeleton, long_strings = _cut_long_strings(body, max_images)
    try:
        document = json.loads(skeleton)
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
    uploads = []
    for i, text in enumerate(payload.images):
        label = f"images[{i}]"
        try:
            # A placeholder (see _cut_long_strings): no client string can start with NUL
            # when strings were cut, as that takes an escape, and a backslash stops the
            # cutting.
            if long_strings and text.startswith("\0"):
                start, end = long_strings[int(text[1:])]
                data = _decode_base64_in_windows(body, start, end, label)
            else:
                data = _decode_base64(text, label)
        except ItemError as error:
            if len(payload.images) == 1:
                raise
            uploads.append(Upload(label, b"", refused=error.reason))  # costs only itself
            continue
        uploads.append(Upload(label, data))
    return uploads


def _check_json_counts(body: bytes, max_images: int) -> None:
    """What a JSON body (or its start) shows before it is parsed: non-ASCII bytes where
    there should be base64, or more brackets or commas than a valid body holds."""
    if len(body) > MAX_NON_ASCII_JSON_BYTES and not body.isascii():
        # Base64 is ASCII; a large body that isn't would only make json.loads build a huge
        # string (holding the interpreter lock all the while) to be refused afterwards.
        raise UploadError(400, f"A JSON body over {MAX_NON_ASCII_JSON_BYTES // 1024} KB must "
                               "be ASCII: base64 images are.")
    if scanning.count(body, b"[") + scanning.count(body, b"{") > MAX_JSON_BRACKETS:
        raise UploadError(400, 'The JSON body nests too many arrays or objects; send '
                               '{"images": ["<base64>", ...]}.')
    if scanning.count(body, b",") > 2 * max_images + 16:
        raise _too_many(max_images)


def _cut_long_strings(body: bytes, max_images: int) -> tuple[bytes, list[tuple[int, int]]]:
    """`body` with each string of over LONG_STRING_BYTES replaced by a placeholder,
    "\\u0000<n>", and where the n-th such string lies in `body`.

    A body with a backslash is returned whole (an escaped quote can only be told from a
    real one by parsing everything before it). Otherwise every quote delimits a string,
    and one with a raw control character is invalid JSON here as it is for json.loads.
    """
    if scanning.count(body, b"\\"):
        return body, []
    limit = 8 * max_images + 128  # two strings per member; members are bounded by commas
    quotes = find_all(body, b'"', limit)
    if len(quotes) > limit:
        raise _too_many(max_images)
    if len(quotes) % 2:
        raise UploadError(400, "Body is not valid JSON: a string is never closed.")
    pieces, long_strings, copied_up_to = [], [], 0
    for opening, closing in zip(quotes[::2], quotes[1::2], strict=True):
        if closing - opening - 1 <= LONG_STRING_BYTES:
            continue
        for start, end in scanning.windows(opening + 1, closing):
            window = body[start:end]
            if len(window.translate(None, _CONTROL_BYTES)) != len(window):
                raise UploadError(400, "Body is not valid JSON: a string holds a raw control "
                                       "character (line breaks must be written \\n).")
        pieces += [body[copied_up_to: opening + 1], b"\\u0000%d" % len(long_strings)]
        long_strings.append((opening + 1, closing))
        copied_up_to = closing
    pieces.append(body[copied_up_to:])
    return b"".join(pieces), long_strings


def _decode_base64(text: str, label: str) -> bytes:
    if text.startswith("data:"):
        header, comma, text = text.partition(",")
        if not (comma and header.endswith(";base64")):
            raise _not_a_base64_url(label)
    try:
        encoded = text.encode("ascii")
    except UnicodeEncodeError as error:
        raise ItemError(label, "not valid base64: it holds non-ASCII characters.") from error
    # Line breaks and spaces are allowed (MIME wraps base64); dropped in one C call.
    return _decode_base64_end(encoded.translate(None, b" \t\r\n"), label)


def _decode_base64_in_windows(body: bytes, start: int, end: int, label: str) -> bytes:
    """The base64 string body[start:end] (ASCII, no control characters), decoded a
    megabyte at a time, as strictly as `_decode_base64`."""
    if body.startswith(b"data:", start, end):
        comma = body.find(b",", start, end)
        if comma < 0 or not body[start:comma].endswith(b";base64"):
            raise _not_a_base64_url(label)
        start = comma + 1
    decoded, carry, before = [], b"", 0
    spans = scanning.windows(start, end)
    for window_start, window_end in spans[:-1]:
        encoded = carry + body[window_start:window_end].translate(None, b" ")
        if b"=" in encoded:
            # Padding: valid only if the rest of the string is spaces (or more '='), so
            # the rest joins this window as the end of the string.
            rest = [body[s:e].translate(None, b" ") for s, e in
                    scanning.windows(window_end, end)]
            decoded.append(_decode_base64_end(encoded + b"".join(rest), label, before))
            return b"".join(decoded)
        whole = len(encoded) - len(encoded) % 4  # groups of four, the rest carried over
        encoded, carry = encoded[:whole], encoded[whole:]
        decoded.append(_a2b(encoded, label))
        before += whole
    last_start, last_end = spans[-1]
    encoded = carry + body[last_start:last_end].translate(None, b" ")
    decoded.append(_decode_base64_end(encoded, label, before))
    return b"".join(decoded)


def _decode_base64_end(encoded: bytes, label: str, before: int = 0) -> bytes:
    """Decode the last (or only) part of a base64 string, `before` characters into it."""
    data = encoded.rstrip(b"=")
    padding = len(encoded) - len(data)
    # Whole 4-character groups, padded only as far as the last group needs.
    if len(encoded) % 4 or (padding and (padding > 2 or len(data) % 4 != 4 - padding)):
        raise ItemError(label, f"not valid base64: {before + len(data)} characters with "
                               f"{padding} '=' of padding.")
    return _a2b(encoded, label)


def _a2b(encoded: bytes, label: str) -> bytes:
    try:
        return binascii.a2b_base64(encoded, strict_mode=True)  # nothing outside base64
    except (binascii.Error, ValueError) as error:
        raise ItemError(label, f"not valid base64: {error}") from error


def _not_a_base64_url(label: str) -> ItemError:
    return ItemError(label, "a data: URL must be base64 (data:image/png;base64,...).")
