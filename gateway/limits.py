"""Request bodies larger than AGNEWS_MAX_BODY_BYTES are refused with 413."""

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.asgi import HttpMiddleware
from gateway.errors import error_response
from shared.contracts.errors import BadRequest, PayloadTooLarge


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body exceeds {limit} bytes", details={"max_body_bytes": limit})


class BodyLimitMiddleware(HttpMiddleware):
    """Checks Content-Length up front and counts streamed (chunked) bodies as they arrive."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        super().__init__(app)
        self.limit = max_body_bytes

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            if not declared.isdigit():
                error = BadRequest("Content-Length is not a number")
                await error_response(error)(scope, receive, send)
                return
            if int(declared) > self.limit:
                await error_response(_too_large(self.limit))(scope, receive, send)
                return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _too_large(self.limit)
            return message

        await self.app(scope, counted, send)
