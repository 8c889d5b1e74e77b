"""Request bodies and query strings, validated by pydantic; failures are 422s naming the fields."""

from collections.abc import Mapping
from typing import TypeVar

from pydantic import TypeAdapter, ValidationError
from starlette.requests import Request

from gateway.errors import invalid
from shared.contracts.errors import InvalidRequest

T = TypeVar("T")


async def parse_body(
    request: Request, adapter: TypeAdapter[T], *, tags: frozenset[str] = frozenset()
) -> T:
    body = await request.body()
    if not body.strip():
        raise InvalidRequest(
            "body: the request body is empty; send a JSON object", details={"fields": ["body"]}
        )
    try:
        return adapter.validate_json(body)
    except ValidationError as exc:
        raise invalid(exc, tags=tags) from None


async def parse_optional_body(request: Request, adapter: TypeAdapter[T], default: T) -> T:
    if not (await request.body()).strip():
        return default
    return await parse_body(request, adapter)


def parse_query(query: Mapping[str, str], adapter: TypeAdapter[T]) -> T:
    try:
        return adapter.validate_python(dict(query))
    except ValidationError as exc:
        raise invalid(exc) from None
