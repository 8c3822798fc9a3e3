"""Small ASGI guards that run before routing."""

from __future__ import annotations

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
            body = json.dumps({"detail": "Not Found: the path has an encoded slash (%2F)."})
            await send({"type": "http.response.start", "status": 404,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body.encode()})
            return
        await self.app(scope, receive, send)
