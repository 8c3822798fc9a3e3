"""Reading the images out of a prediction request, within the configured limits.

Three body forms are accepted: multipart/form-data with parts named `file`, one raw encoded
image (`image/*` or `application/octet-stream`), or JSON `{"images": ["<base64>", ...]}`.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError
from python_multipart.multipart import MultipartParser, parse_options_header

SUPPORTED_TYPES = "multipart/form-data, image/*, application/octet-stream or application/json"


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
    """The parts named `file`, in order; other fields are ignored."""
    parts: list[tuple[dict[bytes, bytes], list[bytes]]] = []
    header_field, header_value = [], []

    def on_part_begin() -> None:
        parts.append(({}, []))

    def on_header_end() -> None:
        parts[-1][0][b"".join(header_field).lower()] = b"".join(header_value)
        header_field.clear()
        header_value.clear()

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_part_data": lambda data, start, end: parts[-1][1].append(data[start:end]),
        "on_header_field": lambda data, start, end: header_field.append(data[start:end]),
        "on_header_value": lambda data, start, end: header_value.append(data[start:end]),
        "on_header_end": on_header_end,
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except Exception as error:  # noqa: BLE001 - the parser raises several kinds
        raise UploadError(400, f"Malformed multipart body: {error}") from error
    uploads = []
    for headers, chunks in parts:
        _, disposition = parse_options_header(headers.get(b"content-disposition", b""))
        if disposition.get(b"name") != b"file":
            continue
        if len(uploads) == max_images:
            raise _too_many(max_images)
        filename = disposition.get(b"filename", b"").decode("utf-8", "replace")
        label = f"file #{len(uploads) + 1}" + (f" ('{filename}')" if filename else "")
        uploads.append(Upload(label, b"".join(chunks)))
    return uploads


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
