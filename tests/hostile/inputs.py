"""Generators of hostile and broken requests: every input an attacker was seen to try.

Each `Hostile` is one request, built from scratch here (no binary blobs are committed),
with the statuses a well-behaved service may answer it with. `tests/hostile/` sends them
to a real server; `bench/soak.py` mixes them into its load.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import struct
import zlib

from PIL import Image, ImageDraw

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclasses.dataclass(frozen=True)
class Hostile:
    name: str
    body: bytes
    content_type: str
    expect: frozenset[int]
    path: str = "/predict"
    was: str = ""  # what it did before this service defended against it

    def request(self, host: str) -> bytes:
        """The whole HTTP/1.1 request."""
        head = (f"POST {self.path} HTTP/1.1\r\nHost: {host}\r\n"
                f"Content-Type: {self.content_type}\r\nContent-Length: {len(self.body)}\r\n\r\n")
        return head.encode("latin-1") + self.body


def encode(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


def chunk(kind: bytes, payload: bytes, length: int | None = None) -> bytes:
    return (struct.pack(">I", len(payload) if length is None else length) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload)))


def multipart(files: list[tuple[str, bytes]], boundary: str = "hostileboundary") -> bytes:
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"'
             f"\r\nContent-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n"
             for name, data in files]
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


MULTIPART = "multipart/form-data; boundary=hostileboundary"


def digit_png() -> bytes:
    """A valid request's image: a dark 1 on white."""
    image = Image.new("L", (60, 90), 255)
    ImageDraw.Draw(image).rectangle((27, 12, 33, 78), fill=0)
    return encode(image, "PNG")


def png_idat_claims_3gb() -> bytes:
    """67 bytes: a 1x1 PNG whose IDAT length field claims ~3 GB."""
    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return (PNG_SIGNATURE + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0\0"), length=3_000_000_000))


def progressive_jpeg_with_scans(count: int) -> bytes:
    """A progressive JPEG whose last scan is repeated until it has `count` scans."""
    image = Image.new("RGB", (512, 512), (255, 255, 255))
    ImageDraw.Draw(image).ellipse((100, 100, 400, 400), outline=(0, 0, 0), width=30)
    data = encode(image, "JPEG", progressive=True, quality=90)
    last_scan = data.rindex(b"\xff\xda")
    return data[:last_scan] + data[last_scan:-2] * (count - data.count(b"\xff\xda") + 1) \
        + b"\xff\xd9"


def tiff_with_text_strip_offsets() -> bytes:
    """A TIFF whose StripOffsets tag claims to be text: Pillow raises TypeError on it."""
    data = bytearray(encode(Image.new("L", (16, 16), 128), "TIFF"))
    (offset,) = struct.unpack("<I", data[4:8])
    (entries,) = struct.unpack("<H", data[offset: offset + 2])
    for i in range(entries):
        at = offset + 2 + 12 * i
        if struct.unpack("<H", data[at: at + 2])[0] == 273:
            data[at + 2: at + 4] = struct.pack("<H", 2)  # ASCII
    return bytes(data)


def ico_wrapping_a_large_png() -> bytes:
    """An ICO whose 16x16 directory entry holds an 8900x8900 PNG."""
    png = encode(Image.new("L", (8900, 8900)), "PNG", compress_level=9)
    directory = struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32,
                                                            len(png), 22)
    return directory + png


@functools.cache
def cases() -> tuple[Hostile, ...]:
    """Every hostile request, generated once per process (a few seconds)."""
    bomb = png_idat_claims_3gb()
    return (
        Hostile("png-idat-claims-3gb", bomb, "image/png", frozenset({400}),
                was="+3,023 MB, 2.5 s, then 400"),
        Hostile("four-of-them-in-one-multipart", multipart([(f"{i}.png", bomb) for i in range(4)]),
                MULTIPART, frozenset({400}), was="8.5 s; a neighbour waited 8 s"),
        Hostile("json-million-wrong-typed-items", b'{"images": [' + b",".join([b"0"] * 1_000_000)
                + b"]}", "application/json", frozenset({413}), was="422 after 30.5 s, +1.4 GB"),
        Hostile("json-million-empty-objects", b'{"images": [' + b",".join([b"{}"] * 700_000)
                + b"]}", "application/json", frozenset({400, 413}),
                was="same as above: 30 s, over 1 GB"),
        Hostile("jpeg-3000-progressive-scans", progressive_jpeg_with_scans(3000), "image/jpeg",
                frozenset({413}), was="11.5 s of CPU; a neighbour waited 11.2 s"),
        Hostile("tiff-pillow-typeerror", tiff_with_text_strip_offsets(), "image/tiff",
                frozenset({400}), was="500, and its two batch neighbours 500"),
        Hostile("json-invalid-utf8", b"\xff\xfe\xfa", "application/json", frozenset({400}),
                was="500"),
        Hostile("json-100k-open-brackets", b"[" * 100_000, "application/json", frozenset({400}),
                was="500"),
        Hostile("json-5000-digit-integer", b'{"images": ' + b"9" * 5000 + b"}",
                "application/json", frozenset({400}), was="500"),
        Hostile("webp-lossless-6324px", encode(Image.new("L", (6324, 6324)), "WEBP",
                                               lossless=True), "image/webp", frozenset({413}),
                was="+562 MB"),
        Hostile("png-rgb-6324px", encode(Image.new("RGB", (6324, 6324)), "PNG",
                                         compress_level=9), "image/png", frozenset({413}),
                was="+257 MB"),
        Hostile("png-rgba-6324px", encode(Image.new("RGBA", (6324, 6324)), "PNG",
                                          compress_level=9), "image/png", frozenset({413}),
                was="+281 MB"),
        Hostile("tiff-float-6000px", encode(Image.new("F", (6000, 6000)), "TIFF",
                                            compression="tiff_adobe_deflate"), "image/tiff",
                frozenset({413}), was="+305 MB"),
        Hostile("jpeg-progressive-444-6000px", encode(
            Image.new("RGB", (6000, 6000)), "JPEG", progressive=True, subsampling=0,
            quality=95), "image/jpeg", frozenset({413}), was="+240 MB"),
        Hostile("ico-wrapping-8900px-png", ico_wrapping_a_large_png(), "image/x-icon",
                frozenset({415}), was="+306 MB in a decoder worker, which kept 380 MB"),
        Hostile("multipart-9mb-filename", multipart([("n" * 9_000_000 + ".png", digit_png())]),
                MULTIPART, frozenset({400}), was="kept in a cache: +295 MB after 12, never freed"),
        Hostile("encoded-slash-path", digit_png(), "image/png", frozenset({404}),
                path="/models/sequential%2fpredict", was="200"),
        Hostile("base64-excess-padding", b'{"images": ["AAAA===="]}', "application/json",
                frozenset({400}), was="passed as base64"),
        *(Hostile(f"format-{name.lower()}", encode(Image.new(mode, (64, 64)), name),
                  "application/octet-stream", frozenset({415}), was="decoded")
          for name, mode in (("PPM", "RGB"), ("PCX", "RGB"), ("TGA", "RGB"), ("SGI", "RGB"),
                             ("IM", "RGB"), ("JPEG2000", "RGB"))),
    )
