"""Session epochs: one counter per key name in Redis. A session cookie carries the epoch it was
issued under; `python -m gateway.keys revoke NAME` bumps the key's epoch, and every cookie issued
before then is refused. Gateways keep each epoch for AGNEWS_SESSION_EPOCH_CACHE_S (5 s): a
revocation holds everywhere within that."""

import time
from collections.abc import Callable

import redis
import redis.asyncio


def epochs_key(prefix: str) -> str:
    """The hash of every key's epoch (a name that is absent there is at epoch 0)."""
    return f"{prefix}:session-epochs"


def revoke(client: redis.Redis, prefix: str, name: str) -> int:
    """Ends every session of the key `name`; its new epoch."""
    return int(client.hincrby(epochs_key(prefix), name, 1))


class SessionEpochs:
    """Each key's current epoch, read from Redis and kept for `cache_s` seconds."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        prefix: str,
        cache_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.key = epochs_key(prefix)
        self.cache_s = cache_s
        self.clock = clock
        self._seen: dict[str, tuple[int, float]] = {}

    async def current(self, name: str, *, fresh: bool = False) -> int:
        """The key's epoch: from the cache unless it is older than `cache_s` or `fresh` is
        asked for. Redis being unreachable raises (the request fails; it is not let in)."""
        now = self.clock()
        seen = self._seen.get(name)
        if seen is not None and not fresh and now - seen[1] < self.cache_s:
            return seen[0]
        value = await self.client.hget(self.key, name)
        epoch = int(value) if value is not None else 0
        self._seen[name] = (epoch, now)
        return epoch

    async def admits(self, name: str, epoch: int) -> bool:
        """Whether a cookie of the key issued under `epoch` holds. Epochs only grow: one above
        the cached value was issued after this gateway last looked, so it looks again."""
        current = await self.current(name)
        if epoch > current:
            current = await self.current(name, fresh=True)
        return epoch == current
