"""Browser sessions: a key is exchanged once for a signed, expiring cookie.

The cookie holds the key's name, its expiry, a prefix of the key's hash and the key's session
epoch, signed with HMAC-SHA256 under AGNEWS_SESSION_SECRET. Replacing or removing a key ends its
sessions, and so does `python -m gateway.keys revoke NAME` (gateway/epochs.py); no cookie expires
later than now + AGNEWS_SESSION_TTL_S, whoever signed it."""

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from gateway.keyring import Keyring
from shared.contracts.keys import ApiKey
from shared.settings import AccessSettings

COOKIE = "agnews_session"
_KEY_ID_CHARS = 16
# How far a gateway's clock may lag the one that signed a cookie (an expiry that far beyond
# now + the TTL is still taken): the fleet's clocks keep to Amazon Time Sync, within milliseconds.
CLOCK_SKEW_S = 30


@dataclass(frozen=True)
class Session:
    """What a valid cookie says: its key, the key's epoch when it was issued, its expiry."""

    key: ApiKey
    epoch: int
    expires: int


def _number(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() and len(text) < 20 else None


class SessionSigner:
    def __init__(self, secret: bytes, ttl_s: int) -> None:
        self.secret = secret
        self.ttl_s = ttl_s

    @classmethod
    def from_settings(cls, access: AccessSettings) -> "SessionSigner":
        given = access.session_secret.get_secret_value() if access.session_secret else ""
        secret = given.encode() if given else secrets.token_bytes(32)
        return cls(secret, access.session_ttl_s)

    def _sign(self, payload: str) -> str:
        return hmac.new(self.secret, payload.encode(), hashlib.sha256).hexdigest()

    def issue(self, key: ApiKey, *, epoch: int, now: float | None = None) -> tuple[str, int]:
        """The cookie's value and when it expires (Unix seconds)."""
        expires = int(now if now is not None else time.time()) + self.ttl_s
        payload = f"{key.name}:{expires}:{key.sha256[:_KEY_ID_CHARS]}:{epoch}"
        return f"{payload}:{self._sign(payload)}", expires

    def verify(self, value: str, keyring: Keyring, now: float | None = None) -> Session | None:
        """The session a cookie stands for; None when it is forged, expired, expires further
        out than the TTL allows, or its key is gone. Whether its epoch is current is the
        caller's question (gateway/epochs.py)."""
        payload, _, signature = value.rpartition(":")
        if not hmac.compare_digest(self._sign(payload).encode(), signature.encode()):
            return None
        parts = payload.split(":")
        if len(parts) != 4:
            return None
        name, expiry, key_id, epoch_text = parts
        now = now if now is not None else time.time()
        expires, epoch = _number(expiry), _number(epoch_text)
        if expires is None or epoch is None:
            return None
        if not now < expires <= now + self.ttl_s + CLOCK_SKEW_S:
            return None
        key = keyring.named(name)
        if key is None or not hmac.compare_digest(
            key.sha256[:_KEY_ID_CHARS].encode(), key_id.encode()
        ):
            return None
        return Session(key, epoch, expires)
