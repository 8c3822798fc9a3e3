"""Limits on each HTTP connection, which uvicorn's httptools protocol does not set.

A public HTTP service usually gets these from its front proxy (nginx's
`client_header_timeout`, `large_client_header_buffers`, `worker_connections`). `docker
compose up` exposes this service directly, so it sets them itself:

- **headers**: a request's line and headers must arrive within `header_timeout_s` (else 408,
  or a silent close for a connection that never sent a byte) and within `max_header_bytes`
  (else 431). The size is checked before the parser sees the bytes, because httptools
  buffers each header whole before handing it over: a 100 MB header would be 100 MB here.
- **bodies**: reading a large body waits at its first 256 KB until the app has judged them
  (`BodyStart`), so that the app can refuse it from its start without reading the rest.
  The app times the body it reads (`app.uploads.read_body` answers 408). A body
  still arriving after its answer (an early 413, a route that ignores bodies) may drain for
  `body_timeout_s`, then the connection closes: otherwise each byte would restart uvicorn's
  keep-alive timer and a trickle could hold the connection for ever.
- **connections**: past `max_connections` open in one process, a new connection gets a 503
  and is closed, before it costs a parser or a task.
- **buffered bodies**: bodies are held here until complete; past `max_buffered_body_bytes`
  held by all the connections of a process (a hundred uploads each withholding its last
  byte held a gigabyte), the connection that would add more gets a 503 and is closed.
- **answers not read**: a client that stops reading its responses has its connection
  dropped after `send_timeout_s` (uvicorn would wait for ever, the answer kept in memory).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import Callable

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app import allocator

logger = logging.getLogger("digits.connections")


@dataclasses.dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    max_header_bytes: int = 32 * 1024
    max_connections: int = 1000
    max_body_bytes: int = 10 * 1024 * 1024  # the app's upload limit: a body is buffered to it
    max_buffered_body_bytes: int = 256 * 1024 * 1024
    send_timeout_s: float = 60.0


class BodyBudget:
    """The body bytes all the connections of this process hold before the app takes them."""

    def __init__(self, limit: int):
        self.limit = limit
        self.held = 0
        self.released = 0  # bytes given back since the last trim was asked for
        self.trimmer = allocator.Trimmer()  # hands back what bodies leave in the heap

    def give_back(self, size: int) -> None:
        """`size` bytes of bodies are no longer held here. Freed bodies leave pages all over
        the heap: after every TRIM_AFTER_BYTES of them, the heap is trimmed a second later."""
        self.held -= size
        self.released += size
        if self.released >= allocator.TRIM_AFTER_BYTES:
            self.released = 0
            self.trimmer.trim_soon()


def protocol_for(limits: ConnectionLimits):
    """What uvicorn.Config(http=...) takes: builds a limited protocol per connection. Each
    server process unpickles its own copy, and so its own body budget."""
    return functools.partial(LimitedHttpProtocol, limits=limits,
                             budget=BodyBudget(limits.max_buffered_body_bytes))


class LimitedHttpProtocol(HttpToolsProtocol):
    def __init__(self, *args, limits: ConnectionLimits, budget: BodyBudget, **kwargs):
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.budget = budget
        self.send_deadline: asyncio.TimerHandle | None = None  # while writing is paused
        # Each request's buffered body, with its request: with pipelining, the request
        # answered is not always the one parsed last (`self.cycle`).
        self.bodies: list[tuple[object, Chunks]] = []
        self.trailer_bytes = 0  # of the current request's chunked-body trailers
        self.body_pieces = 0  # parser callbacks for the current request's body
        self.body_start: BodyStart | None = None  # for the current request, if its body is large
        self.reading_headers = True  # until the current request's headers are complete
        self.header_bytes = 0  # of the current request's line and headers, so far
        self.deadline: asyncio.TimerHandle | None = None  # for its headers, or a body drain

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self.refuse(503, f"This server process has {self.limits.max_connections:,} "
                             "connections open; retry shortly.", b"retry-after: 1\r\n")
            return
        self.arm(self.limits.header_timeout_s, self.headers_too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        self.end_body_start()
        self.release_bodies(everything=True)
        if self.send_deadline is not None:
            self.send_deadline.cancel()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        self.send_deadline = self.loop.call_later(self.limits.send_timeout_s, self.not_reading)

    def resume_writing(self) -> None:
        if self.send_deadline is not None:
            self.send_deadline.cancel()
            self.send_deadline = None
        super().resume_writing()

    def not_reading(self) -> None:
        client = "{}:{}".format(*self.client) if self.client else "?"
        logger.info("%s: dropped: read none of its answer for %g s", client,
                    self.limits.send_timeout_s)
        self.transport.abort()  # the unsent answer is discarded with the connection

    def data_received(self, data: bytes) -> None:
        if self.reading_headers and self.deadline is None:
            # Bytes between requests (a stray CRLF, which the parser skips without starting
            # a message) cancel uvicorn's keep-alive timer: the header clock takes over.
            self.arm(self.limits.header_timeout_s, self.headers_too_slow)
        while self.reading_headers and data:
            room = self.limits.max_header_bytes - self.header_bytes
            if room <= 0:
                self.refuse(431, f"The request line and headers are over "
                                 f"{self.limits.max_header_bytes:,} bytes.")
                return
            piece, data = data[:room], data[room:]  # no copy when it all fits
            self.header_bytes += len(piece)
            super().data_received(piece)
            if self.transport.is_closing():
                return
        if data:
            super().data_received(data)

    def on_message_begin(self) -> None:
        if len(self.pipeline) >= MAX_PIPELINED:
            # Requests sent ahead of their answers queue here, each a parsed scope: without
            # a bound, 4 MB of them became 300 MB. The parser turns this into a 400 + close.
            raise RuntimeError(f"over {MAX_PIPELINED} pipelined requests")
        super().on_message_begin()
        if self.deadline is None:  # the first request's clock started at the connection
            self.arm(self.limits.header_timeout_s, self.headers_too_slow)

    def on_headers_complete(self) -> None:
        self.reading_headers = False
        self.disarm()
        if self.body_start is not None:  # announced a large body (see on_header)
            self.scope.setdefault("extensions", {})[BodyStart.EXTENSION] = self.body_start
        super().on_headers_complete()
        if self.body_start is not None and self.cycle is not None:
            self.body_start.ask = functools.partial(self.ask_for_body, self.cycle)

    def ask_for_body(self, cycle) -> None:
        """Send "100 Continue" to a client that waits for it before its body (curl does,
        for uploads over 1 MB), as uvicorn would when the app first reads."""
        if cycle.waiting_for_100_continue and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            cycle.waiting_for_100_continue = False

    def end_body_start(self) -> None:
        """The current request's body is complete (or will never be): an app still
        waiting for its start gets None and reads the body whole."""
        if self.body_start is not None:
            self.body_start.give(None)
            self.body_start = None

    def on_body(self, body: bytes) -> None:
        # uvicorn copies each chunk the socket gives (64 KB or less) into a bytearray, wakes
        # the app for it, pauses reading past 64 KB, and copies the buffer again for the
        # app: a 10 MB upload cost ~150 rounds of the app's read loop and three copies, on
        # the loop that answers every other request. Here the chunks are kept as they come
        # and handed over joined, once: at the body's end, or when it passes the largest
        # body the app accepts (which then refuses it). Reading pauses at that point, so a
        # connection whose app does not read holds no more than the app itself would.
        cycle = self.cycle
        if self.transport.is_closing():  # refused: the rest of this read is not wanted
            return
        if (self.parser.should_upgrade() and self._should_upgrade()) or cycle.response_complete:
            return
        self.body_pieces += 1
        if self.body_pieces > MAX_BODY_PIECES:
            # Each piece (a chunk of a chunked body, or a read) is a parser callback: 12 MB
            # sent as 1-byte chunks cost 0.6 s of CPU. Real clients send kilobytes a piece.
            self.refuse(400, f"The body came in over {MAX_BODY_PIECES:,} pieces.")
            return
        if self.budget.held + len(body) > self.budget.limit:
            self.refuse(503, "This server process is receiving too many uploads at once; "
                             "retry shortly.", b"retry-after: 1\r\n")
            return
        if not isinstance(cycle.body, Chunks):
            cycle.body = Chunks(self.budget)
            self.bodies.append((cycle, cycle.body))
        cycle.body += body
        if len(cycle.body) > self.limits.max_body_bytes:
            self.flow.pause_reading()
            cycle.message_event.set()
        elif (self.body_start is not None and not self.body_start.given.is_set()
                and len(cycle.body) >= PREFIX_BYTES):
            # The app judges a large body's start before the rest is read (`read_body`): a
            # body whose first bytes show it bad is refused without being read whole.
            # Reading resumes when the app asks for the body.
            self.flow.pause_reading()
            self.body_start.give(cycle.body.peek())

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.reading_headers, self.header_bytes, self.trailer_bytes = True, 0, 0
        self.body_pieces = 0
        self.end_body_start()
        self.disarm()

    def on_response_complete(self) -> None:
        answered = self.cycle
        self.release_bodies()  # answered without reading all of it (an early 413, a 404)
        super().on_response_complete()
        if answered.more_body and not self.transport.is_closing():
            if answered is self.cycle and self.expect_100_continue and self.body_pieces == 0:
                # Answered before the client sent any of the body it was waiting to be asked
                # for: what it sends next may be that body (curl sends it after a second
                # anyway) or its next request. Closing is the only safe reading.
                self.transport.close()
            else:
                self.arm(self.limits.body_timeout_s, self.transport.close)

    def release_bodies(self, everything: bool = False) -> None:
        """Give back to the budget the bodies of answered requests (or of all of them)."""
        keep = []
        for cycle, body in self.bodies:
            if everything or cycle.response_complete:
                body.release()
            else:
                keep.append((cycle, body))
        self.bodies = keep

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.reading_headers and self.body_start is None and _announces_large_body(name, value):
            self.body_start = BodyStart()
        if not self.reading_headers:
            # Trailers of a chunked body: uvicorn adds them to the request's headers, so
            # they are capped as headers are (unbounded, 20 MB of them grew the server by
            # 470 MB).
            self.trailer_bytes += len(name) + len(value)
            if self.trailer_bytes > self.limits.max_header_bytes:
                self.refuse(431, "The chunked body's trailers are over "
                                 f"{self.limits.max_header_bytes:,} bytes.")
                return
        super().on_header(name, value)

    def headers_too_slow(self) -> None:
        self.deadline = None
        if self.header_bytes == 0 and self.cycle is None:
            self.transport.close()  # connected and said nothing: no request to answer
        else:
            self.refuse(408, f"The request's headers took over {self.limits.header_timeout_s:g} "
                             "s to arrive.")

    def refuse(self, status: int, message: str, extra_headers: bytes = b"") -> None:
        """Answer `status` and close, from the protocol, unless the app has begun an answer
        (then only close). An app still running sees the client gone and answers no more."""
        if self.transport.is_closing():
            return  # already refused or closed: one answer, one log line
        client = "{}:{}".format(*self.client) if self.client else "?"
        logger.info("%s: refused with %d: %s", client, status, message)
        if (self.cycle is None or self.cycle.response_complete
                or not self.cycle.response_started):
            body = message.encode()
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
                b"content-length: %d\r\nconnection: close\r\n%s\r\n%s"
                % (status, REASONS[status], len(body), extra_headers, body))
        self.transport.close()

    def arm(self, seconds: float, callback) -> None:
        self.disarm()
        self.deadline = self.loop.call_later(seconds, callback)

    def disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None


class Chunks:
    """A body's chunks as the parser hands them over; `bytes()` joins them (uvicorn's
    `receive()` takes `bytes(cycle.body)`, then starts a new buffer). Small chunks (a
    trickle of single bytes) are merged, so that each costs a byte, not an object."""

    def __init__(self, budget: BodyBudget) -> None:
        self.parts: list[bytes | bytearray] = []
        self.size = 0  # held here, not yet handed over
        self.budget = budget

    def __iadd__(self, chunk: bytes) -> Chunks:
        if len(chunk) >= SMALL_CHUNK_BYTES:
            self.parts.append(chunk)
        elif self.parts and isinstance(self.parts[-1], bytearray):
            self.parts[-1] += chunk
        else:
            self.parts.append(bytearray(chunk))
        self.size += len(chunk)
        self.budget.held += len(chunk)
        return self

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:
        data = b"".join(self.parts)
        self.release()  # the app has it now
        return data

    def peek(self) -> bytes:
        """What has come so far, joined, and kept."""
        return b"".join(self.parts)

    def release(self) -> None:
        self.budget.give_back(self.size)
        self.parts, self.size = [], 0


class BodyStart:
    """The ASGI extension `digits.body_start`, in the scope of a request that announces a
    body over PREFIX_BYTES: `await body_start()` gives its first PREFIX_BYTES (or more)
    while reading waits, or None if the body ends before (the app then reads it whole)."""

    EXTENSION = "digits.body_start"

    def __init__(self) -> None:
        self.prefix: bytes | None = None
        self.given = asyncio.Event()
        self.ask: Callable[[], None] = lambda: None  # tells a client waiting to send

    def give(self, prefix: bytes | None) -> None:
        if not self.given.is_set():
            self.prefix = prefix
            self.given.set()

    async def __call__(self) -> bytes | None:
        self.ask()
        await self.given.wait()
        prefix, self.prefix = self.prefix, None  # the app's now: not kept here as well
        return prefix


def _announces_large_body(name: bytes, value: bytes) -> bool:
    name = name.lower()
    if name == b"content-length":
        return value.isdigit() and int(value) > PREFIX_BYTES
    return name == b"transfer-encoding" and b"chunked" in value.lower()


SMALL_CHUNK_BYTES = 16 * 1024
PREFIX_BYTES = 256 * 1024  # a large body's start, see BodyStart and app.uploads.read_body
MAX_PIPELINED = 32  # requests a connection may send ahead of their answers
MAX_BODY_PIECES = 65_536  # 160 bytes a piece on average for a 10 MB body

REASONS = {400: b"Bad Request", 408: b"Request Timeout",
           431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}
