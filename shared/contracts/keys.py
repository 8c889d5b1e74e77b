"""API keys as the settings hold them: a name, the key's sha256 and its scopes."""

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

KeyScope = Literal["predict", "read", "admin"]
ALL_SCOPES: tuple[KeyScope, ...] = ("predict", "read", "admin")


class ApiKey(BaseModel):
    """One API key: a name (jobs record it as their owner), the sha256 of the key (never the key
    itself) and what the key may do."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    scopes: tuple[KeyScope, ...] = Field(min_length=1)
    # Given as a plain key in AGNEWS_API_KEYS (the gateway refuses those unless allowed).
    plain: bool = Field(False, exclude=True)


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_api_keys(value: object) -> object:
    """A JSON list of {name, sha256, scopes}, or (the older form) comma-separated plain keys,
    each an admin key named key1, key2, ... and hashed here; other values as they are."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        return json.loads(text)
    plain = [part.strip() for part in text.split(",") if part.strip()]
    return [
        {
            "name": f"key{index}",
            "sha256": key_digest(key),
            "scopes": list(ALL_SCOPES),
            "plain": True,
        }
        for index, key in enumerate(plain, start=1)
    ]


def api_keys_from(text: str) -> list[ApiKey]:
    """AGNEWS_API_KEYS's value as keys (for tools and tests)."""
    return TypeAdapter(list[ApiKey]).validate_python(parse_api_keys(text))
