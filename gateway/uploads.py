"""POST /v1/uploads: a presigned POST policy (and PUT URL) to put an archive.zip into incoming/
(admin), or a batch job's file of texts (predict)."""

import asyncio
from typing import Any

from pydantic import TypeAdapter
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.auth import require
from gateway.parsing import parse_body
from gateway.schemas import UploadRequest, UploadTicket
from gateway.services import Services, services
from shared.contracts.errors import PayloadTooLarge
from shared.storage import batch_input_key, ticket_key

UPLOAD_REQUEST = TypeAdapter(UploadRequest)


def presign(state: Services, key: str, size: int) -> UploadTicket:
    """A POST policy whose content-length-range bounds the bytes the store takes, and a PUT URL
    that signs Content-Length: the store takes exactly the declared size (at most the limit)."""
    settings = state.settings
    post: dict[str, Any] = state.s3_public.generate_presigned_post(
        Bucket=settings.storage.bucket,
        Key=key,
        Conditions=[["content-length-range", 1, settings.limits.upload_max_bytes]],
        ExpiresIn=settings.gateway.presign_expiry_s,
    )
    put_url = state.s3_public.generate_presigned_url(
        "put_object",
        Params={"Bucket": settings.storage.bucket, "Key": key, "ContentLength": size},
        ExpiresIn=settings.gateway.presign_expiry_s,
    )
    return UploadTicket(
        key=key,
        url=post["url"],
        fields=post["fields"],
        put_url=put_url,
        expires_in=settings.gateway.presign_expiry_s,
        max_bytes=settings.limits.upload_max_bytes,
    )


async def create_upload(request: Request) -> JSONResponse:
    state = services(request)
    body = await parse_body(request, UPLOAD_REQUEST)
    archive = body.suffix == ".zip"
    require(request, "admin" if archive else "predict")
    limit = state.settings.limits.upload_max_bytes
    if body.size > limit:
        raise PayloadTooLarge(
            f"size: the file is {body.size} bytes; the limit is {limit}",
            details={"fields": ["size"], "max_bytes": limit},
        )
    # boto3 adds the exact-key condition itself for a key without ${filename}.
    storage = state.settings.storage
    key = ticket_key(storage) if archive else batch_input_key(storage, body.suffix)
    ticket = await asyncio.to_thread(presign, state, key, body.size)
    return JSONResponse(ticket.model_dump(mode="json"))


routes = [Route("/uploads", create_upload, methods=["POST"])]
