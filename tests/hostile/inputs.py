"""Generators of hostile and broken requests: every input an attacker was seen to try.

Each `Hostile` is one request, built from scratch here (no binary blobs are committed),
with the statuses a well-behaved service may answer it with. `tests/hostile/` sends them
to a real server; `bench/soak.py` mixes them into its load.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import gzip
import io
import json
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
    headers: str = ""  # more header lines, each ending in CRLF

    def request(self, host: str) -> bytes:
        """The whole HTTP/1.1 request."""
        head = (f"POST {self.path} HTTP/1.1\r\nHost: {host}\r\n{self.headers}"
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


def png_with_text_bombs(count: int) -> bytes:
    """A small digit PNG carrying `count` zTXt chunks that each inflate to 8 MB."""
    data = digit_png()
    bomb = zlib.compress(b"\0" * 8_000_000, 9)
    chunks = b"".join(chunk(b"zTXt", b"k%d\0\0" % i + bomb) for i in range(count))
    return data[:33] + chunks + data[33:]


def bilevel_png_with_transparency(width: int, height: int) -> bytes:
    """A 1-bit PNG with a tRNS chunk: Pillow expands it to RGBA to shrink it."""
    data = encode(Image.new("1", (width, height), 1), "PNG", compress_level=9)
    return data[:33] + chunk(b"tRNS", b"\0\0") + data[33:]


def jpeg_segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def baseline_jpeg_one_scan_per_component(width: int, height: int) -> bytes:
    """A baseline JPEG of all-zero blocks, one scan per colour component: libjpeg must
    keep every coefficient of the image to decode it."""
    frame = bytes([8]) + struct.pack(">HHB", height, width, 3) + b"".join(
        bytes([component, 0x11, 0]) for component in (1, 2, 3))
    one_code = bytes([1] + [0] * 15) + b"\0"  # a Huffman table with one 1-bit code: 0
    blocks = -(-width // 8) * -(-height // 8)
    zeros = b"\0" * (blocks * 2 // 8 + 1)  # DC 0 and end-of-block: 2 bits a block
    scans = b"".join(jpeg_segment(0xDA, bytes([1, component, 0, 0, 63, 0])) + zeros
                     for component in (1, 2, 3))
    return (b"\xff\xd8" + jpeg_segment(0xDB, b"\0" + bytes([1] * 64))
            + jpeg_segment(0xC0, frame) + jpeg_segment(0xC4, b"\x00" + one_code)
            + jpeg_segment(0xC4, b"\x10" + one_code) + scans + b"\xff\xd9")


def tiff_of_single_row_strips(rows: int = 65_536) -> bytes:
    """A 1-pixel-wide TIFF of `rows` one-row strips that all point at the same byte:
    Pillow handles each strip in Python (about 0.3 s for 65,536)."""
    entries = [(256, 3, 1, 1), (257, 4, 1, rows), (258, 3, 1, 8), (259, 3, 1, 1),
               (262, 3, 1, 1), (273, 3, rows, None), (277, 3, 1, 1), (278, 3, 1, 1),
               (279, 3, rows, None)]
    directory_size = 2 + 12 * len(entries) + 4
    pixel_at = 8 + directory_size
    offsets_at = pixel_at + 1
    counts_at = offsets_at + 2 * rows
    directory = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        if value is None:
            directory += struct.pack("<HHII", tag, kind, count,
                                     offsets_at if tag == 273 else counts_at)
        elif kind == 4:
            directory += struct.pack("<HHII", tag, kind, count, value)
        else:
            directory += struct.pack("<HHIHH", tag, kind, count, value, 0)
    return (b"II*\0" + struct.pack("<I", 8) + directory + struct.pack("<I", 0) + b"\x80"
            + struct.pack(f"<{rows}H", *[pixel_at] * rows) + struct.pack(f"<{rows}H", *[1] * rows))


def oip_bytes(name: str, elements: list[bytes], lengths: list[int] | None = None
              ) -> tuple[bytes, int]:
    """An Open Inference Protocol v2 binary request of one BYTES input, and its JSON
    header's length; `lengths`: what its length prefixes claim, if not the truth."""
    tail = b"".join(struct.pack("<I", claimed) + element for claimed, element in
                    zip(lengths or [len(e) for e in elements], elements, strict=True))
    head = json.dumps({"inputs": [{"name": name, "datatype": "BYTES", "shape": [len(elements)],
                                   "parameters": {"binary_data_size": len(tail)}}]}).encode()
    return head + tail, len(head)


def protocol_cases(bomb: bytes) -> tuple[Hostile, ...]:
    """The same rules through the standard protocols (app/protocols)."""
    image_bomb, image_head = oip_bytes("image_bytes", [bomb])
    lying, lying_head = oip_bytes("image_bytes", [digit_png()], [2**31])
    inflating = gzip.compress(b'{"inputs": [' + b" " * 200_000_000 + b"]}", 9)
    return (
        Hostile("oip-json-four-million-zeros", b'{"inputs": [{"name": "image", "datatype": '
                b'"FP32", "shape": [1, 28, 28, 1], "data": [' + b",".join([b"0"] * 4_000_000)
                + b"]}]}", "application/json", frozenset({413}),
                path="/v2/models/sequential/infer"),
        Hostile("oip-image-bytes-png-claims-3gb", image_bomb, "application/octet-stream",
                frozenset({400}), path="/v2/models/sequential_image/infer",
                headers=f"Inference-Header-Content-Length: {image_head}\r\n"),
        Hostile("oip-bytes-length-prefix-lies", lying, "application/octet-stream",
                frozenset({400}), path="/v2/models/sequential_image/infer",
                headers=f"Inference-Header-Content-Length: {lying_head}\r\n"),
        Hostile("oip-gzip-inflating-to-200mb", inflating, "application/json", frozenset({413}),
                path="/v2/models/sequential/infer", headers="Content-Encoding: gzip\r\n"),
        Hostile("tfs-json-four-million-zeros", b'{"instances": [' + b",".join(
            [b"0"] * 4_000_000) + b"]}", "application/json", frozenset({413}),
            path="/v1/models/sequential:predict"),
        Hostile("tfs-b64-webp-6324px", json.dumps({"instances": [{"b64": base64.b64encode(
            encode(Image.new("L", (6324, 6324)), "WEBP", lossless=True)).decode()}]}).encode(),
            "application/json", frozenset({413}), path="/v1/models/sequential_image:predict"),
    )


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
        # Found by an attack on the first hardened version:
        Hostile("png-1000-ztxt-bombs", png_with_text_bombs(1000), "image/png", frozenset({400}),
                was="(hardened v1) decoded in the server: 13 s of CPU, its model held 16 s"),
        Hostile("png-1bit-transparent-8000x5000", bilevel_png_with_transparency(8000, 5000),
                "image/png", frozenset({400, 413}), was="(hardened v1) a worker +342 MB"),
        Hostile("jpeg-one-scan-per-component-8000x5000",
                baseline_jpeg_one_scan_per_component(8000, 5000), "image/jpeg",
                frozenset({413}), was="(hardened v1) a worker +232 MB"),
        Hostile("tiff-39-slow-strip-tables", multipart(
            [(f"{i}.tif", tiff_of_single_row_strips()) for i in range(39)]), MULTIPART,
            # 400: over 8,192 strips each (they were allowed 65,536 when this was found)
            frozenset({400, 413}), was="(hardened v1) both workers held 9.8 s, a neighbour 9.6 s"),
        Hostile("json-base64-of-whitespace", ('{"images": ["' + "\u0100 " * 3_000_000 + '"]}')
                .encode(), "application/json", frozenset({400}),
                was="(hardened v1) +338 MB"),
        *(Hostile(f"format-{name.lower()}", encode(Image.new(mode, (64, 64)), name),
                  "application/octet-stream", frozenset({415}), was="decoded")
          for name, mode in (("PPM", "RGB"), ("PCX", "RGB"), ("TGA", "RGB"), ("SGI", "RGB"),
                             ("IM", "RGB"), ("JPEG2000", "RGB"))),
        *protocol_cases(bomb),
    )
