"""Small ASGI guards around routing."""

from __future__ import annotations

import asyncio
import json

from starlette.types import ASGIApp, Receive, Scope, Send


class RefuseEncodedSlashes:
    """404 for a path with an encoded slash (%2F) in it.

    Starlette decodes the path before routing, so `/models/sequential%2Fpredict` would
    otherwise match `/models/{style}/predict`: a second spelling of each route that proxies,
    access rules and caches in front of the service don't know about.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and b"%2f" in scope.get("raw_path", b"").lower():
            await send_json(send, 404, "Not Found: the path has an encoded slash (%2F).")
            return
        await self.app(scope, receive, send)


class ShedOnShutdown:
    """503 + Retry-After for a request cut short by this server's own shutdown.

    When its grace period ends, uvicorn cancels the requests still running and answers
    each with a 500. The client did nothing wrong, and another process or pod can serve the
    same request: a 503 says so (and keeps shutdowns out of the 5xx-error alerts).
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_and_note(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except asyncio.CancelledError:
            if started:
                raise
            await send_json(send, 503, "The server is shutting down; retry.",
                            [(b"retry-after", b"1"), (b"connection", b"close")])


async def send_json(send: Send, status: int, detail: str,
                    headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Answer `{"detail": ...}` with `status` from a middleware, before or without the app."""
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})
