"""Reading the images out of a prediction request, within the configured limits.

Three body forms are accepted: multipart/form-data with parts named `file`, one raw encoded
image (`image/*` or `application/octet-stream`), or JSON `{"images": ["<base64>", ...]}`.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import json

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError
from python_multipart.multipart import parse_options_header as _parse_options_header

SUPPORTED_TYPES = "multipart/form-data, image/*, application/octet-stream or application/json"


# A client sends the same Content-Type (and often the same part headers) every time, and
# parsing one costs more than the rest of reading a small upload. Results are read-only.
parse_options_header = functools.lru_cache(maxsize=1024)(_parse_options_header)


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


class Base64Images(BaseModel):
    images: list[str] = Field(min_length=1, description="Base64 images; data: URLs accepted.")


async def read_uploads(request: Request, max_bytes: int, max_images: int) -> list[Upload]:
    media_type, options = parse_options_header(request.headers.get("content-type", ""))
    media_type = media_type.decode("latin-1").lower()
    if not media_type:
        raise UploadError(415, f"Missing Content-Type; send {SUPPORTED_TYPES}.")
    if not (media_type in ("multipart/form-data", "application/octet-stream", "application/json")
            or media_type.startswith("image/") or media_type.endswith("+json")):
        raise UploadError(415, f"Unsupported Content-Type '{media_type}'; send {SUPPORTED_TYPES}.")
    body = await read_body(request, max_bytes)
    if media_type == "multipart/form-data":
        boundary = options.get(b"boundary")
        if not boundary:
            raise UploadError(400, "multipart/form-data without a boundary parameter.")
        uploads = parse_multipart(body, boundary, max_images)
    elif media_type.endswith("json"):
        uploads = parse_base64_json(body, max_images)
    else:
        uploads = [Upload("request body", body)]
    if not uploads:
        raise UploadError(400, "No image in the request: send parts named 'file'.")
    return uploads


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `max_bytes`."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise UploadError(413, _too_large(int(declared), max_bytes))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise UploadError(413, _too_large(size, max_bytes, at_least=True))
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, limit: int, at_least: bool = False) -> str:
    return (f"Request body is {'over ' if at_least else ''}{size:,} bytes; the limit is "
            f"{limit:,} (DIGITS_MAX_UPLOAD_BYTES).")


def _too_many(max_images: int) -> UploadError:
    return UploadError(413, f"More than {max_images} images in one request "
                            "(DIGITS_MAX_IMAGES_PER_REQUEST); split it.")


def parse_multipart(body: bytes, boundary: bytes, max_images: int) -> list[Upload]:
    """The parts named `file`, in order; other fields are ignored.

    The whole body is already in memory (and bounded), so the parts are found by splitting
    on the boundary: a few C-level byte operations instead of a streaming parser's
    callback per header and chunk, which matters for many small images.
    """
    sections = body.split(b"--" + boundary)
    # sections[0] is the preamble; the last must be the closing "--" (and an epilogue).
    if len(sections) < 2 or not sections[-1].startswith(b"--"):
        raise UploadError(400, "Malformed multipart body: no closing boundary (truncated?).")
    uploads = []
    for section in sections[1:-1]:
        if not (section.startswith(b"\r\n") and section.endswith(b"\r\n")):
            raise UploadError(400, "Malformed multipart body: a part is not framed by CRLF.")
        head, separator, content = section[2:-2].partition(b"\r\n\r\n")
        if not separator:
            raise UploadError(400, "Malformed multipart body: a part has no header end.")
        name, filename = _disposition(head)
        if name != b"file":
            continue
        if len(uploads) == max_images:
            raise _too_many(max_images)
        label = f"file #{len(uploads) + 1}"
        if filename:
            label += f" ('{filename.decode('utf-8', 'replace')}')"
        uploads.append(Upload(label, content))
    return uploads


def _disposition(head: bytes) -> tuple[bytes | None, bytes | None]:
    """The `name` and `filename` of a part's Content-Disposition header."""
    for line in head.split(b"\r\n"):
        field, _, value = line.partition(b":")
        if field.strip().lower() == b"content-disposition":
            _, options = parse_options_header(value.strip())
            return options.get(b"name"), options.get(b"filename")
    return None, None


def parse_base64_json(body: bytes, max_images: int) -> list[Upload]:
    try:
        payload = Base64Images.model_validate(json.loads(body))
    except json.JSONDecodeError as error:
        raise UploadError(400, f"Body is not valid JSON: {error}") from error
    except ValidationError as error:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in error.errors(include_url=False)]
        ) from error
    if len(payload.images) > max_images:
        raise _too_many(max_images)
    return [Upload(f"images[{i}]", _decode_base64(text, f"images[{i}]"))
            for i, text in enumerate(payload.images)]


def _decode_base64(text: str, label: str) -> bytes:
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if not header.endswith(";base64"):
            raise UploadError(400, f"{label}: a data: URL must be base64 "
                                   "(data:image/png;base64,...).")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as error:
        raise UploadError(400, f"{label} is not valid base64: {error}") from error
