"""Browser sessions: a key is exchanged once for a signed, expiring cookie.

The cookie holds the key's name, its expiry and a prefix of the key's hash, signed with HMAC-SHA256
under AGNEWS_SESSION_SECRET: replacing or removing a key ends its sessions."""

import hashlib
import hmac
import secrets
import time

from gateway.keyring import Keyring
from shared.contracts.keys import ApiKey
from shared.settings import AccessSettings

COOKIE = "agnews_session"
_KEY_ID_CHARS = 16


class SessionSigner:
    def __init__(self, secret: bytes, ttl_s: int) -> None:
        self.secret = secret
        self.ttl_s = ttl_s

    @classmethod
    def from_settings(cls, access: AccessSettings) -> "SessionSigner":
        given = access.session_secret
        secret = given.get_secret_value().encode() if given else secrets.token_bytes(32)
        return cls(secret, access.session_ttl_s)

    def _sign(self, payload: str) -> str:
        return hmac.new(self.secret, payload.encode(), hashlib.sha256).hexdigest()

    def issue(self, key: ApiKey, now: float | None = None) -> tuple[str, int]:
        """The cookie's value and when it expires (Unix seconds)."""
        expires = int(now if now is not None else time.time()) + self.ttl_s
        payload = f"{key.name}:{expires}:{key.sha256[:_KEY_ID_CHARS]}"
        return f"{payload}:{self._sign(payload)}", expires

    def verify(self, value: str, keyring: Keyring, now: float | None = None) -> ApiKey | None:
        """The key a cookie stands for; None when it is forged, expired or its key is gone."""
        payload, _, signature = value.rpartition(":")
        if not hmac.compare_digest(self._sign(payload).encode(), signature.encode()):
            return None
        name, expires, key_id = [*payload.split(":"), "", "", ""][:3]
        if not expires.isdigit() or int(expires) <= (now if now is not None else time.time()):
            return None
        key = keyring.named(name)
        if key is None or not hmac.compare_digest(
            key.sha256[:_KEY_ID_CHARS].encode(), key_id.encode()
        ):
            return None
        return key

    def expiry(self, value: str) -> int | None:
        parts = value.split(":")
        return int(parts[1]) if len(parts) == 4 and parts[1].isdigit() else None
