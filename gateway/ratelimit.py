"""Token buckets per caller (the key's name, or the client's address when the gateway is open)
for predictions, job creation and reads of jobs and models; beyond them a 429 with Retry-After.

The buckets live in each gateway process: N gateways let through up to N times the rate. That
is enough to stop one client from flooding the queues, and costs no Redis round trip."""

import math
import time
from collections import OrderedDict
from dataclasses import dataclass

from starlette.requests import HTTPConnection

from gateway.auth import principal
from shared.contracts.errors import RateLimited
from shared.settings import AccessSettings

MAX_CALLERS = 100_000


@dataclass
class _Bucket:
    tokens: float
    at: float


class TokenBuckets:
    def __init__(self, name: str, rate_per_s: float, burst: int) -> None:
        self.name = name
        self.rate = rate_per_s
        self.burst = burst
        self.buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, caller: str, now: float | None = None) -> float:
        """0 when a token was taken, else the seconds until one will be there."""
        now = time.monotonic() if now is None else now
        bucket = self.buckets.pop(caller, None) or _Bucket(float(self.burst), now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        self.buckets[caller] = bucket
        if len(self.buckets) > MAX_CALLERS:
            self.buckets.popitem(last=False)
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self.rate


class RateLimits:
    def __init__(self, access: AccessSettings) -> None:
        self.predict = TokenBuckets("predict", access.rate_predict_per_s, access.rate_predict_burst)
        self.jobs = TokenBuckets("jobs", access.rate_jobs_per_s, access.rate_jobs_burst)
        self.reads = TokenBuckets("read", access.rate_reads_per_s, access.rate_reads_burst)


def caller_id(connection: HTTPConnection) -> str:
    name = principal(connection).name
    if name is not None:
        return f"key:{name}"
    return f"addr:{connection.client.host if connection.client else 'unknown'}"


def check(connection: HTTPConnection, buckets: TokenBuckets) -> None:
    wait = buckets.take(caller_id(connection))
    if wait > 0:
        retry = max(1, math.ceil(wait))
        raise RateLimited(
            f"too many {buckets.name} requests: at most {buckets.burst} at once and "
            f"{buckets.rate:g} per second; retry in {retry} s",
            details={"retry_after_s": retry, "limit": buckets.name},
        )
