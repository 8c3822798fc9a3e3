"""Untrusted bytes -> pixels: the service's security boundary.

Every image a client sends passes through here, and nothing here trusts it. Decoding is
in two steps:

1. `inspect` reads the header of one of the allowed formats by hand (a few hundred bytes
   of parsing, no decoder involved) and prices the image: its pixels, the memory its
   decoder will need, and for JPEG the number of scans. Anything over a limit, any header
   that lies about the bytes actually present, and any other format is refused here,
   before a single pixel is decoded.
2. `decode` turns an inspected image into its luminance, shrunk to at most WORKING_SIZE
   on a side. Every exception a decoder raises becomes an `ImageError` of that image.

Most images are then decoded in worker processes with a memory cap and a time limit
(`app.preprocess_workers`); only a `simple` image (a small, plain PNG whose every chunk
was checked) is decoded in the server process.

The normalisation that turns those pixels into an MNIST digit is `app.preprocessing`.
"""

from __future__ import annotations

import dataclasses
import io
import struct

import cv2
import numpy as np
from PIL import ExifTags, Image

from app.scanning import find_all

# OpenCV would log each unreadable upload to stderr; those get their own 400 answer instead.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)

WORKING_SIZE = 1024
"""Larger images are shrunk to this longest side first: plenty for a 20 px digit, and fast."""

FORMATS = ("PNG", "JPEG", "WebP", "GIF", "BMP", "TIFF")
"""What the service decodes (GIF: the first frame; TIFF: the first page). Every other
format is refused: each extra decoder would be attack surface for no real user."""

FORMAT_LIST = ", ".join(FORMATS)

# Structural limits no real encoder comes near, and that keep the header walks short.
MAX_PNG_CHUNKS = 20_000        # a 10 MB PNG in libpng's 8 KB IDAT chunks has 1,280
MAX_JPEG_SEGMENTS = 1_000      # markers before the first scan (APPn, tables, SOF)
MAX_JPEG_SCANS = 64            # progressive encoders write about 10; each scan re-reads
#                                every coefficient, so a few thousand cost minutes
MAX_GIF_BLOCKS = 10_000        # extension sub-blocks before the first frame
MAX_TIFF_ENTRIES = 1_000       # tags in the first directory
MAX_TIFF_STRIPS = 8_192        # Pillow handles each strip or tile in Python (5 µs each)


class ImageError(ValueError):
    """The upload is not a usable image; the message says why (HTTP 400)."""

    status_code = 400


class ImageTooLarge(ImageError):
    """The image would cost more than the configured limits to decode (HTTP 413)."""

    status_code = 413


class ImageTooComplex(ImageError):
    """The image's structure is over a limit: too many chunks, segments, scans' markers,
    blocks, tags or strips for a real encoder (HTTP 400)."""


class DecoderFailure(ImageError):
    """A decoder raised something unexpected: a malformed file or a decoder bug (HTTP 400)."""


class UnsupportedFormat(ImageError):
    """The data is in a format this service does not decode (HTTP 415)."""

    status_code = 415


@dataclasses.dataclass(frozen=True)
class DecodeLimits:
    max_pixels: int = 40_000_000
    """Largest width x height decoded."""
    max_decode_bytes: int = 96 * 2**20
    """Largest memory one image's decoder may need (the estimate from its header)."""


@dataclasses.dataclass(frozen=True)
class ImageHeader:
    format: str          # one of FORMATS
    width: int
    height: int
    decode_bytes: int    # the decoder's working memory, estimated from the header
    simple: bool = False  # a small, plain PNG: safe to decode in the server process
    fast_png: bool = False  # 8-bit grey or RGB with no special chunk: OpenCV decodes it

    @property
    def pixels(self) -> int:
        return self.width * self.height


# --- step 1: inspect ----------------------------------------------------------------------

def inspect(data: bytes, limits: DecodeLimits) -> ImageHeader:
    """Check an encoded image's header against the limits without decoding it."""
    if not data:
        raise ImageError("The image is empty (0 bytes).")
    reader = next((read for signature, read in _READERS if data.startswith(signature)), None)
    if reader is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        reader = _webp_header
    if reader is None:
        raise UnsupportedFormat(f"The data is not an image format this service reads "
                                f"({FORMAT_LIST}).")
    try:
        header = reader(data)
    except ImageError:
        raise
    except (struct.error, IndexError, ValueError) as error:
        raise ImageError("The image is corrupt or truncated: its header ends early.") from error
    except Exception as error:  # noqa: BLE001 - a header nobody anticipated is still a 400
        raise DecoderFailure(f"The image header could not be read ({type(error).__name__}).") \
            from error
    _check_limits(header, limits)
    return header


def inspect_prefix(prefix: bytes, limits: DecodeLimits) -> None:
    """Refuse an image from its first bytes, while the rest is still arriving, when they
    already show it over a limit (its size, or its count of chunks, scans, blocks, tags or
    strips) or in a format not read here: the error `inspect` of the whole image raises.

    Every such check only grows with more bytes (a count over its limit in a prefix is
    over it in the whole), so nothing `inspect` would accept is refused. An error that may
    come from the cut itself (a chunk or a table running past the prefix) says nothing,
    and is left for `inspect` of the whole image.
    """
    try:
        inspect(prefix, limits)
    except (ImageTooLarge, ImageTooComplex, UnsupportedFormat):
        raise
    except ImageError:
        pass


def _check_limits(header: ImageHeader, limits: DecodeLimits) -> None:
    if header.width <= 0 or header.height <= 0:
        raise ImageError(f"The image claims {header.width}x{header.height} pixels.")
    if header.pixels > limits.max_pixels:
        raise ImageTooLarge(f"The image is {header.width}x{header.height} pixels; the limit "
                            f"is {limits.max_pixels:,} pixels. Send a smaller image.")
    if header.decode_bytes > limits.max_decode_bytes:
        raise ImageTooLarge(
            f"The {header.format} image ({header.width}x{header.height}) would need about "
            f"{header.decode_bytes / 2**20:,.0f} MB to decode; the limit is "
            f"{limits.max_decode_bytes / 2**20:,.0f} MB. Send it smaller, or as a JPEG.")


def _corrupt(what: str) -> ImageError:
    return ImageError(f"The image is corrupt or truncated: {what}.")


# Peak memory per pixel of decoding and shrinking (measured as the peak RSS growth on
# 24-megapixel images): Pillow holds grey and palette pixels in 1 byte, 16-bit grey in 2,
# everything else in 4; `shrink` then works in bands, so 1 byte more covers the rest.
_GREY_BYTES = 2
_GREY16_BYTES = 3
_COLOUR_BYTES = 5

# Compressed text and ICC chunks: Pillow inflates each (to at most 1 MB, 64 MB in all).
_PNG_COMPRESSED_CHUNKS = (b"zTXt", b"iTXt", b"iCCP")
MAX_PNG_COMPRESSED_CHUNKS = 16
# A PNG decoded in the server process: a handful of chunks, nothing compressed but its
# pixels, at most this many bytes.
SIMPLE_PNG_CHUNKS = 64
SIMPLE_PNG_BYTES = 4 * 2**20


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Chunks that make OpenCV's reading differ from Pillow's: transparency, orientation (EXIF,
# or XMP in a text chunk), animation.
_PNG_SPECIAL_CHUNKS = {b"tRNS", b"eXIf", b"iTXt", b"acTL"}
_PNG_COLOUR_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}


def inspect_simple(data: bytes, limits: DecodeLimits) -> ImageHeader | None:
    """`inspect` for a simple PNG, None for anything else (including what `inspect` would
    refuse), at a bounded cost (a few dozen chunks read at most): cheap enough for the
    event loop."""
    if not data.startswith(PNG_SIGNATURE) or len(data) > SIMPLE_PNG_BYTES:
        return None
    try:
        header = _png_header(data, max_chunks=SIMPLE_PNG_CHUNKS)
        _check_limits(header, limits)
    except (ImageError, struct.error, IndexError, ValueError):
        return None
    return header if header.simple else None


def _png_header(data: bytes, max_chunks: int = MAX_PNG_CHUNKS) -> ImageHeader:
    """Walk every chunk: each must fit in the bytes present (a length field that claims
    gigabytes is how a 67-byte file once made OpenCV allocate 3 GB)."""
    position, chunks, compressed, kinds = 8, 0, 0, set()
    width = height = bit_depth = colour_type = None
    while position < len(data):
        if position + 12 > len(data):
            raise _corrupt("a PNG chunk header is cut off")
        length, kind = struct.unpack(">I4s", data[position: position + 8])
        if length > len(data) - position - 12:
            raise _corrupt(f"a PNG {kind!r} chunk claims {length:,} bytes that are not there")
        if chunks == 0:
            if kind != b"IHDR" or length != 13:
                raise _corrupt("a PNG must start with its IHDR chunk")
            width, height, bit_depth, colour_type = struct.unpack(
                ">IIBB", data[position + 8: position + 18])
        chunks += 1
        if chunks > max_chunks:
            raise ImageTooComplex(f"The PNG has over {max_chunks:,} chunks.")
        kinds.add(kind)
        if kind in _PNG_COMPRESSED_CHUNKS:
            compressed += 1
            if compressed > MAX_PNG_COMPRESSED_CHUNKS:
                raise ImageTooComplex(f"The PNG has over {MAX_PNG_COMPRESSED_CHUNKS} "
                                      "compressed text or profile chunks.")
        position += length + 12
        if kind == b"IEND":
            break
    if width is None:
        raise _corrupt("the PNG has no IHDR chunk")
    if bit_depth not in _PNG_COLOUR_DEPTHS.get(colour_type, ()):
        raise ImageError(f"The PNG has an invalid colour type {colour_type} with bit depth "
                         f"{bit_depth}.")
    if b"IDAT" not in kinds:
        raise _corrupt("the PNG has no image data")
    per_pixel = (_GREY16_BYTES if colour_type == 0 and bit_depth == 16
                 else _GREY_BYTES if colour_type in (0, 3) else _COLOUR_BYTES)
    plain = (max(width, height) <= WORKING_SIZE and bit_depth <= 8 and compressed == 0
             and chunks <= SIMPLE_PNG_CHUNKS and len(data) <= SIMPLE_PNG_BYTES
             and b"acTL" not in kinds)
    return ImageHeader(
        "PNG", width, height, decode_bytes=width * height * per_pixel, simple=plain,
        fast_png=(plain and bit_depth == 8 and colour_type in (0, 2)
                  and not kinds & _PNG_SPECIAL_CHUNKS))


_JPEG_PROGRESSIVE = {0xC2, 0xC6, 0xCA, 0xCE}
_JPEG_FRAMES = {0xC0, 0xC1, 0xC3, 0xC5, 0xC7, 0xC9, 0xCB, 0xCD} | _JPEG_PROGRESSIVE


def _jpeg_header(data: bytes) -> ImageHeader:
    """The frame header (SOF) and the number of scans (SOS markers)."""
    position, segments, frame = 2, 0, None
    while frame is None:
        while data[position] == 0xFF and data[position + 1] == 0xFF:  # fill bytes
            position += 1
        if data[position] != 0xFF:
            raise _corrupt("a JPEG marker is missing")
        marker = data[position + 1]
        if marker in (0xD9, 0xDA):  # end of image or a scan before any frame header
            raise _corrupt("the JPEG has no frame header")
        (length,) = struct.unpack(">H", data[position + 2: position + 4])
        if marker in _JPEG_FRAMES:
            frame = (marker, position + 4)
        position += 2 + length
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise ImageTooComplex(f"The JPEG has over {MAX_JPEG_SEGMENTS:,} segments.")
    marker, start = frame
    height, width, components = struct.unpack(">HHB", data[start + 1: start + 6])
    sampling = [data[start + 7 + 3 * i] for i in range(components)]
    if components not in (1, 3, 4) or not all(1 <= s >> 4 <= 4 and 1 <= s & 15 <= 4
                                              for s in sampling):
        raise ImageError(f"The JPEG has an unsupported frame ({components} components, "
                         "or sampling factors outside 1 to 4).")
    # Inside compressed data every 0xFF byte is followed by 0x00 (or is a restart marker),
    # so this counts scan headers exactly, or overcounts from metadata: never under.
    scans = len(find_all(data, b"\xff\xda", limit=MAX_JPEG_SCANS))
    if scans == 0:
        raise _corrupt("the JPEG has no scan")
    if scans > MAX_JPEG_SCANS:
        raise ImageTooLarge(f"The JPEG has over {MAX_JPEG_SCANS} scans (real encoders write "
                            "about 10).")
    # libjpeg scales by 1/2, 1/4 or 1/8 while decoding (see decode), so it produces at most
    # a fraction of the pixels; an image of several scans (progressive, or one scan per
    # component) also keeps all its DCT coefficients, 2 bytes each, 64 per 8x8 block of
    # each component, until its last scan.
    scale = _jpeg_draft_scale(width, height)
    per_pixel = {1: _GREY_BYTES, 3: _COLOUR_BYTES}.get(components, _COLOUR_BYTES + 1)  # CMYK
    output = -(-width // scale) * -(-height // scale) * per_pixel
    coefficients = 0
    if scans > 1 or marker in _JPEG_PROGRESSIVE:
        max_h = max(s >> 4 for s in sampling)
        max_v = max(s & 15 for s in sampling)
        for s in sampling:
            blocks_x = -(-width * (s >> 4) // (8 * max_h))
            blocks_y = -(-height * (s & 15) // (8 * max_v))
            coefficients += blocks_x * blocks_y * 128
    return ImageHeader("JPEG", width, height, decode_bytes=output + coefficients)


def _jpeg_draft_scale(width: int, height: int) -> int:
    """The largest of 1, 2, 4, 8 that keeps both sides at least WORKING_SIZE (as draft)."""
    scale = 1
    while scale < 8 and min(width, height) // (scale * 2) >= WORKING_SIZE:
        scale *= 2
    return scale


def _webp_header(data: bytes) -> ImageHeader:
    kind = data[12:16]
    if kind == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise _corrupt("a lossy WebP frame has no start code")
        width, height = struct.unpack("<HH", data[26:30])
        width, height = width & 0x3FFF, height & 0x3FFF
    elif kind == b"VP8L":
        if data[20] != 0x2F:
            raise _corrupt("a lossless WebP frame has no signature")
        (bits,) = struct.unpack("<I", data[21:25])
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    elif kind == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
    else:
        raise _corrupt(f"unknown WebP chunk {kind!r}")
    # libwebp's animation decoder (Pillow's only WebP path) keeps two RGBA canvases, and
    # Pillow a copy: 16 bytes a pixel, measured, and 1 for the rest.
    return ImageHeader("WebP", width, height, decode_bytes=width * height * 17)


def _gif_header(data: bytes) -> ImageHeader:
    """The logical screen, and a walk to the first frame (the only one decoded)."""
    width, height, flags = struct.unpack("<HHB", data[6:11])
    position = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    blocks = 0
    while data[position] == 0x21:  # extensions: a label, then sub-blocks up to a 0 length
        position += 2
        while (size := data[position]) != 0:
            position += size + 1
            blocks += 1
            if blocks > MAX_GIF_BLOCKS:
                raise ImageTooComplex(f"The GIF has over {MAX_GIF_BLOCKS:,} blocks before "
                                      "its first frame.")
        position += 1
    if data[position] != 0x2C:
        raise _corrupt("the GIF has no image")
    # The first frame is decoded onto the whole screen, as palette indices.
    return ImageHeader("GIF", width, height, decode_bytes=width * height * _GREY_BYTES)


_BMP_COMPRESSION = {0: "none", 3: "bit fields", 6: "bit fields"}


def _bmp_header(data: bytes) -> ImageHeader:
    (header_size,) = struct.unpack("<I", data[14:18])
    if header_size == 12:
        width, height, _, bits = struct.unpack("<HHHH", data[18:26])
        compression = 0
    elif header_size >= 40:
        width, height, _, bits, compression = struct.unpack("<iiHHI", data[18:34])
    else:
        raise _corrupt(f"a BMP header of {header_size} bytes")
    if compression not in _BMP_COMPRESSION:
        # Run-length BMPs are decoded by Pillow in Python, one run at a time: slow by design.
        raise UnsupportedFormat("Compressed (RLE, JPEG or PNG) BMPs are not supported; send "
                                f"an uncompressed BMP or another format ({FORMAT_LIST}).")
    if bits not in (1, 4, 8, 16, 24, 32):
        raise ImageError(f"The BMP has {bits} bits per pixel.")
    width, height = width, abs(height)  # a negative height means top-down rows
    per_pixel = _GREY_BYTES if bits <= 8 else _COLOUR_BYTES
    return ImageHeader("BMP", width, height, decode_bytes=width * height * per_pixel)


# TIFF compressions Pillow decodes through libtiff or its own decoders, as scanners write
# them: none, CCITT fax (bilevel scans), LZW, JPEG, Deflate, PackBits.
_TIFF_COMPRESSIONS = {1, 2, 3, 4, 5, 7, 8, 32773, 32946}
_TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8}


def _tiff_header(data: bytes) -> ImageHeader:
    """The first directory (the first page, the only one decoded)."""
    order = "<" if data[:2] == b"II" else ">"
    (offset,) = struct.unpack(order + "I", data[4:8])
    (entries,) = struct.unpack(order + "H", data[offset: offset + 2])
    if entries > MAX_TIFF_ENTRIES:
        raise ImageTooComplex(f"The TIFF has {entries:,} tags; the limit is "
                              f"{MAX_TIFF_ENTRIES:,}.")
    tags: dict[int, tuple[int, int, int]] = {}
    for i in range(entries):
        at = offset + 2 + 12 * i
        tag, kind, count = struct.unpack(order + "HHI", data[at: at + 8])
        tags[tag] = (kind, count, at + 8)

    def value(tag: int, default: int | None = None) -> int:
        if tag not in tags:
            if default is None:
                raise _corrupt(f"the TIFF has no tag {tag}")
            return default
        kind, _, at = tags[tag]
        return struct.unpack(order + ("H" if kind == 3 else "I"), data[at: at + (2 if kind == 3
                                                                                 else 4)])[0]

    width, height = value(256), value(257)
    compression = value(259, 1)
    if compression not in _TIFF_COMPRESSIONS:
        raise UnsupportedFormat(f"TIFF compression {compression} is not supported; send an "
                                f"uncompressed, LZW, Deflate, JPEG or fax TIFF ({FORMAT_LIST}).")
    samples = value(277, 1)
    bits_kind, bits_count, bits_at = tags.get(258, (3, 1, 0))
    bits = value(258, 1) if bits_count == 1 else 8
    if not 1 <= samples <= 8 or bits not in (1, 2, 4, 8, 16, 32, 64):
        raise ImageError(f"The TIFF has {samples} samples of {bits} bits per pixel.")
    for kind, count, at in tags.values():  # values stored elsewhere must be in the file
        size = _TIFF_TYPE_SIZES.get(kind, 1) * count
        if size > 4:
            (where,) = struct.unpack(order + "I", data[at: at + 4])
            if where + size > len(data):
                raise _corrupt("a TIFF tag points past the end of the file")
    offsets_tag, counts_tag = (324, 325) if 324 in tags else (273, 279)
    strips = tags.get(offsets_tag, (0, 0, 0))[1]
    if strips > MAX_TIFF_STRIPS:  # refused before its arrays are read
        raise ImageTooComplex(f"The TIFF has {strips:,} strips or tiles; the limit is "
                              f"{MAX_TIFF_STRIPS:,}.")
    offsets = _tiff_array(data, order, tags.get(offsets_tag))
    counts = _tiff_array(data, order, tags.get(counts_tag))
    if len(offsets) == 0 or len(offsets) != len(counts):
        raise _corrupt("the TIFF has no image data")
    if int((offsets + counts).max()) > len(data):
        raise _corrupt("its image data ends early")
    per_pixel = (_GREY_BYTES if samples == 1 and bits <= 8
                 else _GREY16_BYTES if samples == 1 and bits == 16
                 else max(_COLOUR_BYTES, samples * bits // 8 + 1))
    return ImageHeader("TIFF", width, height, decode_bytes=width * height * per_pixel)


def _tiff_array(data: bytes, order: str, entry: tuple[int, int, int] | None) -> np.ndarray:
    """A SHORT or LONG array tag's values (inline when they fit in 4 bytes)."""
    if entry is None:
        return np.zeros(0, dtype=np.int64)
    kind, count, at = entry
    if kind not in (3, 4):
        raise _corrupt(f"a TIFF strip tag has type {kind}")
    dtype = np.dtype(order + ("u2" if kind == 3 else "u4"))
    if count * dtype.itemsize > 4:
        (at,) = struct.unpack(order + "I", data[at: at + 4])
    return np.frombuffer(data, dtype, count, at).astype(np.int64)


_READERS = (
    (PNG_SIGNATURE, _png_header),
    (b"\xff\xd8\xff", _jpeg_header),
    (b"GIF87a", _gif_header),
    (b"GIF89a", _gif_header),
    (b"BM", _bmp_header),
    (b"II*\x00", _tiff_header),
    (b"MM\x00*", _tiff_header),
)


# --- step 2: decode -----------------------------------------------------------------------

def decode(data: bytes, header: ImageHeader) -> np.ndarray:
    """An inspected image's luminance as uint8 [H, W], at most WORKING_SIZE on a side.

    Raises ImageError (or a subclass) and nothing else, whatever the bytes hold.
    """
    try:
        if header.fast_png:
            pixels = _decode_fast_png(data, header)
            if pixels is not None:
                return pixels
        return _decode_with_pillow(data, header)
    except ImageError:
        raise
    except MemoryError as error:
        raise ImageTooLarge("The image needs more memory to decode than is allowed.") from error
    except Image.DecompressionBombError as error:
        raise ImageTooLarge(f"The image is too large to decode safely: {error}") from error
    except (OSError, SyntaxError, EOFError) as error:
        raise ImageError(f"The image is corrupt or truncated: {error}") from error
    except Exception as error:  # noqa: BLE001 - a decoder bug is this image's problem alone
        raise DecoderFailure(f"The {header.format} image could not be decoded "
                             f"({type(error).__name__}: {str(error)[:200]}).") from error


def _decode_fast_png(data: bytes, header: ImageHeader) -> np.ndarray | None:
    """A plain PNG (8-bit grey or RGB, no special chunk), decoded by OpenCV.

    The result is the one Pillow gives, pixel for pixel (tested), from one C call that
    releases the GIL: 7 µs instead of 24 for a small digit (`python -m bench.preprocess`).
    None when OpenCV can't read it: Pillow then tries, and words the error.
    """
    pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.shape[:2] != (header.height, header.width):
        return None
    return pixels if pixels.ndim == 2 else luminance_from_bgr(pixels)


def luminance_from_bgr(bgr: np.ndarray) -> np.ndarray:
    """Pillow's RGB-to-L conversion (ITU-R 601 weights, in its 16-bit fixed point)."""
    blue, green, red = (bgr[..., channel].astype(np.uint32) for channel in range(3))
    return ((red * 19595 + green * 38470 + blue * 7471 + 0x8000) >> 16).astype(np.uint8)


def _decode_with_pillow(data: bytes, header: ImageHeader) -> np.ndarray:
    # Only the plugin of the inspected format may read the bytes.
    image = Image.open(io.BytesIO(data), formats=[header.format.upper()])
    if image.size != (header.width, header.height):
        raise _corrupt(f"its header says {header.width}x{header.height} but the decoder "
                       f"reads {image.width}x{image.height}")
    if header.format == "JPEG":
        # Let libjpeg skip detail we would throw away (the 1/2, 1/4 or 1/8 DCT scaling).
        image.draft(image.mode, (WORKING_SIZE, WORKING_SIZE))
    image.load()
    orientation = exif_orientation(image)
    image = orient(shrink(image), orientation)
    return to_grayscale(flatten_transparency(image))


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1-8; 1 is upright), from EXIF, XMP or TIFF's own tags."""
    if image.format != "TIFF" and not any(key in image.info for key in _ORIENTATION_SOURCES):
        return 1  # nothing to read; skips parsing for the common untagged image
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # noqa: BLE001 - a malformed EXIF block should not lose the image
        return 1
    return orientation if orientation in _TRANSPOSE else 1


_ORIENTATION_SOURCES = ("exif", "xmp", "XML:com.adobe.xmp")
_TRANSPOSE = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def orient(image: Image.Image, orientation: int) -> Image.Image:
    """Turn the image upright as its EXIF orientation says, as phone cameras expect."""
    method = _TRANSPOSE.get(orientation)
    return image if method is None else image.transpose(method)


def shrink(image: Image.Image) -> Image.Image:
    """At most WORKING_SIZE on a side, never holding a second full-size image.

    Pillow's `reduce` and `resize` copy an image with alpha whole (to premultiply it), and
    converting a palette or 16-bit image copies it whole too. Here bands of rows are cut,
    converted and box-reduced one at a time into the small image, so the peak is the
    decoded image plus a band.
    """
    if max(image.size) <= WORKING_SIZE:
        return image
    scale = WORKING_SIZE / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    factor = max(image.size) // WORKING_SIZE
    # A 1-bit image is reduced as grey even when one of its two values is transparent:
    # "LA" bands cost five times as much to convert and reduce (150 ms for 40 megapixels).
    mode = "L" if image.mode == "1" else _reducible_mode(image)
    reduced = Image.new(mode, (-(-image.width // factor), -(-image.height // factor)))
    band = factor * 32
    for top in range(0, image.height, band):
        piece = image.crop((0, top, image.width, min(image.height, top + band)))
        if piece.mode != mode:
            piece = piece.convert(mode)
        reduced.paste(piece.reduce(factor) if factor > 1 else piece, (0, top // factor))
    if image.mode == "1" and "transparency" in image.info:
        reduced = _bilevel_with_alpha(reduced, transparent_white=bool(image.info["transparency"]))
    return reduced.resize(size, Image.Resampling.BOX)


def _bilevel_with_alpha(grey: Image.Image, transparent_white: bool) -> Image.Image:
    """The "LA" image of a reduced 1-bit image one of whose values is transparent. Every
    visible pixel had the other value, so that is the colour throughout, and the share of
    visible pixels in each reduced one (its alpha) is its grey level, or its inverse."""
    alpha = Image.eval(grey, lambda level: 255 - level) if transparent_white else grey
    return Image.merge("LA", (Image.new("L", grey.size, 0 if transparent_white else 255), alpha))


def _reducible_mode(image: Image.Image) -> str:
    if image.mode == "1":  # grey: LA keeps a transparent value at half RGBA's cost
        return "LA" if "transparency" in image.info else "L"
    if image.mode == "P":
        return "RGBA" if "transparency" in image.info else "L"
    if image.mode.startswith("I;16"):
        return "I"
    if image.mode in ("L", "LA", "RGB", "RGBA", "I", "F"):
        return image.mode
    return "RGBA" if "A" in image.getbands() else "RGB"


def flatten_transparency(image: Image.Image) -> Image.Image:
    """Composite a transparent image onto a background that contrasts with its strokes.

    A canvas export is dark strokes on fully transparent (often transparent *black*)
    pixels: dropping alpha would put black strokes on black. The visible pixels' own
    brightness decides the background: dark strokes go on white, light strokes on black.
    """
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode not in ("RGBA", "LA", "PA", "La", "RGBa"):
        return image
    rgba = image.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
    if alpha.min() > 0.98:
        return rgba.convert("RGB")
    luminance = np.asarray(rgba.convert("L"), dtype=np.float32)
    visible = alpha > 0.5
    stroke_level = float(luminance[visible].mean()) if visible.any() else 0.0
    background_level = 255 if stroke_level < 128 else 0
    background = Image.new("RGBA", rgba.size, (background_level,) * 3 + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_grayscale(image: Image.Image) -> np.ndarray:
    """Luminance as uint8 [H, W] (ITU-R 601 weights, as Pillow's "L")."""
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = _wide_to_grayscale(image)
    elif image.mode != "L":
        image = image.convert("RGB").convert("L")
    # Copying the bytes out is cheaper than numpy's generic array-interface route.
    return np.frombuffer(image.tobytes(), dtype=np.uint8).reshape(image.height, image.width)


def _wide_to_grayscale(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float images to 8 bits, by their own range (Pillow would clip)."""
    values = np.asarray(image, dtype=np.float64)
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    scaled = np.nan_to_num((values - low) / max(high - low, 1e-12) * 255.0)
    return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), mode="L")


def set_pillow_pixel_limit(max_pixels: int) -> None:
    """Make Pillow's process-wide decompression-bomb limit match the service's own."""
    Image.MAX_IMAGE_PIXELS = max_pixels
