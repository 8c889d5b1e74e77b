"""The configured API keys, found by the hash of a presented key."""

import hmac

from shared.contracts.keys import ApiKey, key_digest


class Keyring:
    """The configured keys, by hash: a presented key is hashed and compared with every one."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self.keys = keys

    def __bool__(self) -> bool:
        return bool(self.keys)

    def find(self, presented: str) -> ApiKey | None:
        digest = key_digest(presented).encode()
        found = None
        # Compare with every key, always: the time taken says nothing about which one matched.
        for key in self.keys:
            if hmac.compare_digest(key.sha256.encode(), digest):
                found = key
        return found

    def named(self, name: str) -> ApiKey | None:
        return next((key for key in self.keys if key.name == name), None)
