"""Token buckets per caller (the key's name, or the client's address when the gateway is open)
for predictions, job creation, feedback and reads of jobs and models, and a cap on the event
streams a caller holds open at once; beyond them a 429 with Retry-After.

Both live in each gateway process: N gateways let through up to N times the rate and the
streams. That is enough to stop one client from flooding the queues or holding every
connection, and costs no Redis round trip."""

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import HTTPConnection

from gateway.auth import principal
from shared.contracts.errors import RateLimited
from shared.settings import AccessSettings

MAX_CALLERS = 100_000
# What a caller refused a stream is told to wait: a stream lasts as long as its job, so any wait
# is a guess; this one is short enough for a page that closed a stream to get its next soon.
STREAM_RETRY_AFTER_S = 5


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


class StreamSlots:
    """The event streams each caller holds open; only callers holding one take any memory."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held: dict[str, int] = {}

    def take(self, caller: str) -> Callable[[], None]:
        """A slot for one more stream (RateLimited when the caller holds `limit`), and the call
        that gives it back (once, however often it is called)."""
        held = self.held.get(caller, 0)
        if held >= self.limit:
            raise RateLimited(
                f"too many event streams: at most {self.limit} open at once; close one, or "
                f"retry in {STREAM_RETRY_AFTER_S} s",
                details={"retry_after_s": STREAM_RETRY_AFTER_S, "limit": "streams"},
            )
        self.held[caller] = held + 1
        given_back = False

        def give_back() -> None:
            nonlocal given_back
            if given_back:
                return
            given_back = True
            left = self.held.get(caller, 0) - 1
            if left > 0:
                self.held[caller] = left
            else:
                self.held.pop(caller, None)

        return give_back


class RateLimits:
    def __init__(self, access: AccessSettings) -> None:
        self.predict = TokenBuckets("predict", access.rate_predict_per_s, access.rate_predict_burst)
        self.jobs = TokenBuckets("jobs", access.rate_jobs_per_s, access.rate_jobs_burst)
        self.reads = TokenBuckets("read", access.rate_reads_per_s, access.rate_reads_burst)
        self.feedback = TokenBuckets(
            "feedback", access.rate_feedback_per_s, access.rate_feedback_burst
        )
        self.streams = StreamSlots(access.max_streams_per_key)


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


def open_stream(connection: HTTPConnection, slots: StreamSlots) -> Callable[[], None]:
    """A stream slot of the caller's (429 when it holds them all); call the result to give the
    slot back."""
    return slots.take(caller_id(connection))
