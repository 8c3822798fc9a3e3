"""Slow and oversized clients against a real `python -m app`, over raw sockets.

The server runs with short limits (1 s for headers, 2 s for bodies) so that each case
takes a few seconds; every wait below is on a condition (an answer, a closed socket) with
a generous deadline, and valid requests are sent meanwhile.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
import zlib

import httpx
import pytest

from tests.images import draw_one, encode
from tests.servers import resident_mib, start_server

HEADER_TIMEOUT_S, BODY_TIMEOUT_S, SEND_TIMEOUT_S = 1, 2, 2
# uvloop's timers count in milliseconds from the loop's clock, read once per iteration, so
# a deadline can fire a little before the client's own clock says it is due (by 0.14 ms in
# one CI run).
EARLY_S = 0.05
MAX_HEADER_BYTES, MAX_CONNECTIONS = 8192, 12
MAX_UPLOAD_BYTES, MAX_BUFFERED_BODY_BYTES = 2_000_000, 3_000_000


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    process, base = start_server(
        tiny_model_dir, header_timeout_s=HEADER_TIMEOUT_S, body_timeout_s=BODY_TIMEOUT_S,
        max_header_bytes=MAX_HEADER_BYTES, max_connections=MAX_CONNECTIONS,
        send_timeout_s=SEND_TIMEOUT_S, max_upload_bytes=MAX_UPLOAD_BYTES,
        max_buffered_body_bytes=MAX_BUFFERED_BODY_BYTES, max_images_per_request=2048,
        preprocess_workers=1)
    yield process, base
    process.terminate()
    process.wait(timeout=30)


def connect(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or resets it)."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def trickle(sock: socket.socket, data: bytes, every_s: float, stop: threading.Event) -> None:
    """Send `data` a byte at a time until it is all sent, the server hangs up, or `stop`."""
    for byte in data:
        if stop.wait(every_s):
            return
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return


def valid_prediction(base: str) -> float:
    started = time.perf_counter()
    answer = httpx.post(f"{base}/predict", content=encode(draw_one()),
                        headers={"content-type": "image/png"}, timeout=30)
    assert answer.status_code == 200
    return time.perf_counter() - started


def test_headers_sent_a_byte_at_a_time_are_cut_with_408(server):
    _, base = server
    started = time.monotonic()  # before connecting: the server's clock starts at accept
    sock, stop = connect(base), threading.Event()
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000 + b"\r\n\r\n"
    sender = threading.Thread(target=trickle, args=(sock, request, 0.05, stop))
    sender.start()
    try:
        assert valid_prediction(base) < 5  # answered while the slow client trickles
        answer = read_until_closed(sock)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        sender.join()
        sock.close()
    assert answer.startswith(b"HTTP/1.1 408 ")
    # Cut at the header deadline: long before its 1,000+ bytes (50 s) were sent.
    assert HEADER_TIMEOUT_S - EARLY_S <= elapsed < HEADER_TIMEOUT_S + 10


def test_a_connection_that_says_nothing_is_closed(server):
    _, base = server
    started = time.monotonic()  # before connecting: the server's clock starts at accept
    with connect(base) as sock:
        assert read_until_closed(sock) == b""  # closed without an answer: nothing was asked
        assert HEADER_TIMEOUT_S - EARLY_S <= time.monotonic() - started < HEADER_TIMEOUT_S + 10


def test_a_megabyte_of_headers_gets_431_before_it_is_buffered(server):
    process, base = server
    before = resident_mib(process.pid)
    with connect(base) as sock:
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: "
        try:
            sock.sendall(head + b"a" * (1 << 20))
        except OSError:
            pass  # the server may hang up before the whole megabyte is sent
        answer = read_until_closed(sock)
    # The 431, or a reset if the server hung up while the client was still sending.
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 ")
    assert resident_mib(process.pid) - before < 20
    assert valid_prediction(base) < 5


def test_headers_just_under_the_limit_are_served(server):
    _, base = server
    filler = "a" * (MAX_HEADER_BYTES - 500)
    answer = httpx.get(f"{base}/healthz", headers={"x-filler": filler}, timeout=30)
    assert answer.status_code == 200


def test_a_body_sent_a_byte_at_a_time_gets_408_and_the_connection_closes(server):
    _, base = server
    sock, stop = connect(base), threading.Event()
    body = encode(draw_one())
    started = time.monotonic()  # before the head: the body's clock starts when it arrives
    sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body))
    sender = threading.Thread(target=trickle, args=(sock, body, 0.05, stop))
    sender.start()
    try:
        assert valid_prediction(base) < 5
        answer = read_until_closed(sock)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        sender.join()
        sock.close()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"DIGITS_BODY_TIMEOUT_S" in answer
    assert BODY_TIMEOUT_S - EARLY_S <= elapsed < BODY_TIMEOUT_S + 10


def test_a_body_left_to_drain_after_its_answer_is_cut(server):
    # /healthz answers at once and never reads the body: the trickle that follows may not
    # keep the connection open (each byte would restart uvicorn's keep-alive timer).
    _, base = server
    sock, stop = connect(base), threading.Event()
    started = time.monotonic()  # before the head: the body's clock starts when it arrives
    sock.sendall(b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
    sender = threading.Thread(target=trickle, args=(sock, b"x" * 100000, 0.05, stop))
    sender.start()
    try:
        answer = read_until_closed(sock)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        sender.join()
        sock.close()
    assert answer.startswith(b"HTTP/1.1 ")  # whatever /healthz says to a POST
    assert elapsed < BODY_TIMEOUT_S + 10


def test_connections_past_the_cap_get_503_and_the_service_recovers(server):
    _, base = server
    # A keep-alive request each, so that the header deadline doesn't close them meanwhile.
    held = []
    try:
        for _ in range(MAX_CONNECTIONS * 2):
            sock = connect(base)
            held.append(sock)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answers = [sock.recv(4096) for sock in held]
    finally:
        for sock in held:
            sock.close()
    served = [a for a in answers if a.startswith(b"HTTP/1.1 200 ")]
    refused = [a for a in answers if a.startswith(b"HTTP/1.1 503 ")]
    assert len(served) + len(refused) == len(answers)
    assert 0 < len(served) <= MAX_CONNECTIONS and refused
    assert all(b"retry-after: 1" in a.lower() for a in refused)
    deadline = time.monotonic() + 30
    while True:  # until the closed ones are noticed and counted off
        answer = httpx.post(f"{base}/predict", content=encode(draw_one()),
                            headers={"content-type": "image/png"}, timeout=30)
        if answer.status_code == 200:
            break
        assert answer.status_code == 503 and time.monotonic() < deadline
        time.sleep(0.1)


def test_a_stray_line_break_after_an_answer_does_not_hold_the_connection(server):
    # The parser skips CRLFs between requests without starting one, and the bytes cancel
    # uvicorn's keep-alive timer: the header deadline must still close the connection.
    _, base = server
    with connect(base) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"\r\n")
        started = time.monotonic()
        read_until_closed(sock)
        assert time.monotonic() - started < HEADER_TIMEOUT_S + 10


def test_requests_pipelined_far_ahead_of_their_answers_are_cut(server):
    process, base = server
    before = resident_mib(process.pid)
    with connect(base) as sock:
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 20_000)  # 700 KB
        except OSError:
            pass  # the server may hang up first
        answers = read_until_closed(sock)
    assert answers.count(b"HTTP/1.1 200 ") < 20_000  # cut long before the end
    assert resident_mib(process.pid) - before < 50
    assert valid_prediction(base) < 5


def png_start() -> bytes:
    """The first bytes of a PNG whose image data runs to the end of a full-size upload:
    nothing in them is wrong yet, so the server reads on (its check of a body's start,
    `app.uploads.read_body`, refuses what is)."""
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", 28, 28, 8, 0, 0, 0, 0)
    head = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))
    return head + struct.pack(">I", MAX_UPLOAD_BYTES - len(head) - 12) + b"IDAT"


def withholding_upload(base: str, sent: int) -> socket.socket:
    """A connection that announces a full-size upload, sends `sent` bytes of it, and waits."""
    sock = connect(base)
    start = png_start()[:sent]
    sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                 + f"Content-Length: {MAX_UPLOAD_BYTES}\r\n\r\n".encode() + start
                 + b"\0" * (sent - len(start)))
    return sock


def test_uploads_withholding_their_end_share_one_budget(server):
    # Two uploads each hold 1.4 MB, waiting for their last bytes; a third would take the
    # process past its 3 MB budget: it gets 503 (or is cut off), while small requests are
    # still answered. Once the two go, uploads fit again.
    _, base = server
    held = [withholding_upload(base, 1_400_000) for _ in range(2)]
    try:
        time.sleep(0.5)  # let the server read what they sent
        third = withholding_upload(base, len(png_start()))
        try:
            third.sendall(b"\0" * 400_000)
        except OSError:
            pass  # reset while sending: refused all the same
        answer = read_until_closed(third)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 503"), answer[:200]
        third.close()
        assert valid_prediction(base) < 5
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 10
    while True:  # the budget is given back as the server notices the two are gone
        sock = withholding_upload(base, 1_400_000)
        sock.sendall(b"\0" * (MAX_UPLOAD_BYTES - 1_400_000))
        answer = read_until_closed(sock)
        sock.close()
        if answer.startswith(b"HTTP/1.1 400") or time.monotonic() > deadline:
            break
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]  # read whole: a broken PNG


def test_a_client_that_reads_no_answer_is_dropped(server):
    # Pipelined requests for 2,048 predictions each, with the images the models saw:
    # answers of ~8 MB in all, which the client never reads. Once the socket buffers are full, the
    # server waits SEND_TIMEOUT_S for the client to read, then drops the connection.
    _, base = server
    boundary = b"b0undary"
    part = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; '
            b'filename="d.png"\r\nContent-Type: image/png\r\n\r\n'
            + encode(draw_one().resize((28, 42))) + b"\r\n")
    body = part * 2048 + b"--" + boundary + b"--\r\n"
    request = (b"POST /predict?debug=true HTTP/1.1\r\nHost: x\r\nContent-Type: "
               b"multipart/form-data; boundary=" + boundary
               + f"\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    answer = httpx.post(f"{base}/predict?debug=true", content=body, headers={
        "content-type": "multipart/form-data; boundary=b0undary"}, timeout=30)
    assert answer.status_code == 200
    pipelined = 12
    assert pipelined * len(answer.content) > 6_000_000  # past what the kernel buffers
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: small
    host, port = base.removeprefix("http://").split(":")
    sock.connect((host, int(port)))
    sock.settimeout(30)
    sock.sendall(request * pipelined)
    time.sleep(SEND_TIMEOUT_S + 3)
    assert valid_prediction(base) < 5
    received = read_until_closed(sock)  # ends: the server has hung up
    sock.close()
    assert len(received) < pipelined * len(answer.content)


def test_answered_pipelined_requests_give_their_bodies_back(server):
    # From the outside attack: each round, a request answered without reading its 50 KB
    # body, with another request behind it in the same write. The body's bytes must
    # return to the budget (3 MB here): 100 rounds would otherwise exhaust it for good.
    _, base = server
    rounds = b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 50000\r\n\r\n" + (
        b"x" * 50_000) + b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    for _ in range(100):
        sock = connect(base)
        sock.sendall(rounds)
        assert read_until_closed(sock).count(b"HTTP/1.1 200") == 2
        sock.close()
    sock = withholding_upload(base, MAX_UPLOAD_BYTES)  # a whole 2 MB upload still fits
    answer = read_until_closed(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]  # read whole: a broken PNG


def test_pipelined_uploads_keep_their_own_bodies(server):
    _, base = server
    png = encode(draw_one())
    one = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
           + f"Content-Length: {len(png)}\r\n".encode())
    sock = connect(base)
    sock.sendall((one + b"\r\n" + png) * 2 + one + b"Connection: close\r\n\r\n" + png)
    answers = read_until_closed(sock)
    sock.close()
    assert answers.count(b"HTTP/1.1 200") == 3, answers[:500]


def test_chunked_trailers_are_capped_like_headers(server):
    process, base = server
    before = resident_mib(process.pid)
    sock = connect(base)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"0\r\n")
    try:
        for _ in range(20):
            sock.sendall(b"a:b\r\n" * 200_000)  # 1 MB of trailer lines per round
    except OSError:
        pass  # cut off while sending
    answer = read_until_closed(sock)
    sock.close()
    # /healthz may answer before its trailers end; then the 431, and the connection closes.
    assert answer == b"" or b"HTTP/1.1 431" in answer, answer[:300]
    assert resident_mib(process.pid) - before < 50
    assert valid_prediction(base) < 5


def test_a_body_in_tiny_chunks_is_cut_off(server):
    # 1-byte chunks cost a parser callback each: past 65,536 pieces the body is refused.
    process, base = server
    sock = connect(base)
    sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n")
    try:
        for _ in range(10):
            sock.sendall(b"1\r\nx\r\n" * 10_000)
    except OSError:
        pass  # cut off while sending
    answer = read_until_closed(sock)
    sock.close()
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert valid_prediction(base) < 5
