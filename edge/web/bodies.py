"""Request bodies are bounded before a byte of them is kept: the declared Content-Length is checked first, a
body without one (chunked) is refused, and what is read never exceeds the limit. The app then gets the body
already read, so no route can read an unbounded one by mistake."""
from __future__ import annotations

import json
import logging

logger = logging.getLogger("lineguard")

BODY_METHODS = ("POST", "PUT", "PATCH", "DELETE")


class BoundedBodies:
    """ASGI middleware: refuse 413 (too large), 411 (no Content-Length, or chunked), 400 (unreadable length)."""

    def __init__(self, app, max_bytes: int, headers: dict[str, str], larger: dict[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.larger = dict(larger or {})  # paths that take bigger bodies (the mask's polygons)
        self.headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length, refusal = self._declared_length(scope)
        if refusal is not None:
            logger.warning("web: %s %s refused: %s", scope["method"], scope["path"][:100], refusal[1])
            await self._refuse(send, *refusal)
            return
        if length == 0 and scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        body = await self._read(receive, length)
        if body is None:
            return  # the client went away before its body was in
        await self.app(scope, _replay(body, receive), send)

    def _declared_length(self, scope) -> tuple[int, tuple[int, str] | None]:
        headers = dict(scope["headers"])
        if b"transfer-encoding" in headers:
            return 0, (411, "send the body with a Content-Length: chunked request bodies are refused")
        declared = headers.get(b"content-length")
        if declared is None:
            refused = (411, "a Content-Length is required") if scope["method"] in BODY_METHODS else None
            return 0, refused
        if not declared.isdigit() or len(declared) > 18:
            return 0, (400, "unreadable Content-Length")
        limit = self.larger.get(scope["path"], self.max_bytes)
        if int(declared) > limit:
            return 0, (413, f"Content-Length {int(declared)} refused: request bodies are at most "
                            f"{limit} bytes")
        return int(declared), None

    async def _read(self, receive, length: int) -> bytes | None:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > length:  # more than declared: HTTP framing prevents it, the check keeps the bound anyway
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _refuse(self, send, status: int, reason: str) -> None:
        body = json.dumps({"ok": False, "reason": reason}).encode()
        # The rest of a refused body is never read: the server's protocol closes after a short linger.
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   *self.headers]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _replay(body: bytes, receive):
    """A receive() that hands over the body already read, then waits as the original does (for disconnects)."""
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return replayed
