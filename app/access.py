"""Optional API keys: who may use the service.

Off unless keys are configured (`DIGITS_API_KEYS`, comma-separated, or
`DIGITS_API_KEYS_FILE`, one SHA-256 hex digest of a key per line). Then every request
but the probes and the page's own files must carry a key, as `Authorization: Bearer
<key>` or `X-API-Key: <key>`, or it gets 401 with `WWW-Authenticate`.

Only digests are kept: the presented key is hashed and compared with every configured
digest by `hmac.compare_digest`, without stopping at the first match, so the time taken
says nothing about how much of a key was right, or which key it was.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from app.middleware import send_json

# Open without a key: what probes call (kubelet, compose healthchecks) and the page's own
# files, which hold no data (the page asks for a key when the API answers 401).
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/", "/favicon.ico"})
OPEN_PREFIXES = ("/static/",)
# Documentation is open when it is served at all (DIGITS_DOCS): it describes, and Swagger
# UI's "Authorize" button then sends the key with each try.
DOC_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def load_key_digests(keys: str, keys_file: Path | None) -> list[bytes]:
    """The digests of every configured key: plain keys from `keys`, hex digests from the
    file (blank lines and `#` comments ignored). A malformed line stops the start-up."""
    digests = [digest(key.strip()) for key in keys.split(",") if key.strip()]
    if keys_file is not None:
        for number, line in enumerate(keys_file.read_text().splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            try:
                value = bytes.fromhex(line.removeprefix("sha256:"))
            except ValueError:
                value = b""
            if len(value) != hashlib.sha256().digest_size:
                raise ValueError(f"{keys_file}, line {number}: not a SHA-256 hex digest")
            digests.append(value)
    return digests


class RequireApiKey:
    """401 for a request without a configured key, before routing reads anything of it."""

    def __init__(self, app: ASGIApp, digests: list[bytes]):
        self.app = app
        self.digests = digests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.allowed(scope):
            await self.app(scope, receive, send)
            return
        await send_json(send, 401, "An API key is required: send 'Authorization: Bearer "
                                   "<key>' or 'X-API-Key: <key>'.",
                        [(b"www-authenticate", b'Bearer realm="digit-service"')])

    def allowed(self, scope: Scope) -> bool:
        path = scope["path"]
        if path in OPEN_PATHS or path in DOC_PATHS or path.startswith(OPEN_PREFIXES):
            return True
        presented = presented_key(scope["headers"])
        return presented is not None and self.matches(presented)

    def matches(self, key: bytes) -> bool:
        wanted = hashlib.sha256(key).digest()
        found = False
        for candidate in self.digests:  # all of them, whatever matched first
            found |= hmac.compare_digest(wanted, candidate)
        return found


def presented_key(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The key in `X-API-Key`, or in `Authorization: Bearer`, if either is there."""
    for name, value in headers:
        if name == b"x-api-key":
            return value.strip()
        if name == b"authorization":
            scheme, _, credentials = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and credentials.strip():
                return credentials.strip()
    return None


def document_security(openapi: dict) -> dict:
    """The OpenAPI document, saying which operations need a key and that they may 401."""
    components = openapi.setdefault("components", {})
    components["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer"},
        "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    }
    for path, operations in openapi.get("paths", {}).items():
        if path in OPEN_PATHS:
            continue
        for operation in operations.values():
            operation["security"] = [{"bearer": []}, {"apiKey": []}]
            operation.setdefault("responses", {})["401"] = {
                "description": "No API key, or not a configured one."}
    return openapi
