"""`/metrics` on a port of its own (`DIGITS_METRICS_PORT`), as Triton and TorchServe do.

What Prometheus scrapes stays off the public port, where it would tell anyone the traffic,
the models and the error rates. The listener is deliberately small: one request per
connection, its head read within a few seconds and a few kilobytes, `GET /metrics` or a 404,
then close. Each server process listens on the port with SO_REUSEPORT, so a scrape reads
the process that took the connection (as `/metrics` on the main port always has). It has
no key: keep the port off the public network (the k8s Service does not expose it; add a
NetworkPolicy where other pods must not reach it).
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from app.processes import reuse_port_socket

logger = logging.getLogger("digits.metrics")

HEAD_TIMEOUT_S = 2.0  # 32 silent clients hold the listener for this long
MAX_HEAD_BYTES = 8 * 1024
MAX_CONNECTIONS = 32


async def serve_metrics(host: str, port: int, registry: CollectorRegistry) -> asyncio.Server:
    open_connections = 0

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_connections
        open_connections += 1
        try:
            if open_connections <= MAX_CONNECTIONS:
                async with asyncio.timeout(HEAD_TIMEOUT_S):
                    head = await reader.readuntil(b"\r\n\r\n")
                    writer.write(response(head, registry))
                    await writer.drain()
        except (TimeoutError, ValueError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError, ConnectionError):
            pass  # a slow, oversized or vanished client: closed without an answer
        finally:
            open_connections -= 1
            writer.close()

    server = await asyncio.start_server(answer, sock=reuse_port_socket(host, port),
                                        limit=MAX_HEAD_BYTES)
    logger.info("metrics on http://%s:%d/metrics", host, port)
    return server


def response(head: bytes, registry: CollectorRegistry) -> bytes:
    method, _, rest = head.partition(b" ")
    target = rest.partition(b" ")[0].partition(b"?")[0]
    if method in (b"GET", b"HEAD") and target == b"/metrics":
        status, body = b"200 OK", generate_latest(registry)
        media_type = CONTENT_TYPE_LATEST.encode()
    else:
        status, media_type, body = b"404 Not Found", b"text/plain", b"Only GET /metrics here.\n"
    return (b"HTTP/1.1 %s\r\ncontent-type: %s\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % (status, media_type, len(body)) + (b"" if method == b"HEAD" else body))
