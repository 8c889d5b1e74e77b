"""No client can silence or starve another's event stream: resume ids out of Redis's range are
refused before streaming, a stream Redis will not read ends its own subscriptions and no others,
a subscriber that stops reading is dropped rather than buffered without end, and each key holds
a bounded number of streams."""

import asyncio
import functools
import threading
from collections.abc import Iterator

import httpx
import pytest

from gateway import services as gateway_services
from gateway.hub import (
    EventHub,
    HubTuning,
    StreamUnreadable,
    SubscriberLagging,
    Subscription,
)
from gateway.ratelimit import StreamSlots
from shared.contracts.errors import RateLimited
from shared.contracts.jobs import Event, EventType
from shared.contracts.keys import ApiKey, key_digest
from shared.jobstore import AsyncJobStore, JobStore
from shared.settings import Settings
from testkit.gateway import Frame, Gateway, events_only, read_frames, serve, wait_until
from testkit.job_results import train_result
from tests.test_gateway_events import answer, assert_matches, new_job, new_prediction, run_job

TOO_BIG = [
    "99999999999999999999",
    "18446744073709551616",
    "0-18446744073709551616",
    "18446744073709551616-0",
    "1-99999999999999999999",
    f"{2**64 - 1}-{2**64 - 1}",  # XRANGE has nothing after it, and says so with an error
]


@pytest.fixture
def store(settings: Settings) -> JobStore:
    return JobStore.from_settings(settings)


@pytest.fixture
def gateway(settings: Settings) -> Iterator[Gateway]:
    with serve(settings.replace(sse_heartbeat_s=0.05)) as running:
        yield running


def follow(url: str, frames: list[Frame], started: threading.Event) -> None:
    with httpx.Client(timeout=30) as client, client.stream("GET", url) as response:
        assert response.status_code == 200
        for frame in events_only(read_frames(response.iter_lines())):
            frames.append(frame)
            started.set()


# Resume ids out of range.


def test_hostile_resume_ids_are_refused_and_a_good_client_on_the_job_sees_every_event(
    gateway: Gateway, store: JobStore
) -> None:
    job_id = new_job(store)
    store.start(job_id)
    url = f"{gateway.url}/v1/jobs/{job_id}/events"
    good: list[Frame] = []
    started = threading.Event()
    follower = threading.Thread(target=follow, args=(url, good, started))
    follower.start()
    assert started.wait(10)

    with httpx.Client(timeout=10) as client:
        for hostile in TOO_BIG * 3:
            for how in (
                {"headers": {"Last-Event-ID": hostile}},
                {"params": {"last_event_id": hostile}},
            ):
                refused = client.get(url, **how)  # type: ignore[arg-type]
                assert refused.status_code == 422, refused.text
                assert refused.headers["content-type"] == "application/json"
                error = refused.json()["error"]
                assert error["code"] == "invalid_request"
                assert error["details"]["fields"] == ["Last-Event-ID"]
                assert "out of range" in error["message"]
        for step in range(5):
            store.progress(job_id, {"step": step})
        store.succeed(job_id, train_result())
        follower.join(30)
        assert not follower.is_alive()
        assert_matches(good, store.events(job_id))

        # The largest id the API takes is a resume point like any other: after every event.
        edge = f"{10**19 - 1}-{10**19 - 1}"
        with client.stream("GET", url, headers={"Last-Event-ID": edge}) as response:
            assert response.status_code == 200
            assert list(events_only(read_frames(response.iter_lines()))) == []


# A stream Redis will not read.


async def drain(subscription: Subscription) -> list[Event]:
    events: list[Event] = []
    while not events or not events[-1].type.terminal:
        event = await subscription.next(10)
        assert event is not None
        events.append(event)
    return events


async def fails(subscription: Subscription) -> Exception:
    try:
        while True:
            await subscription.next(10)
    except StreamUnreadable as exc:
        return exc


@pytest.mark.parametrize("fault", ["wrong type", "position out of range", "not an event"])
def test_a_stream_that_fails_in_a_reader_ends_its_own_subscriptions_and_no_others(
    settings: Settings, store: JobStore, fault: str
) -> None:
    good, bad = new_job(store), new_job(store)
    raw = store.redis
    if fault == "wrong type":
        raw.delete(store.keys.events(bad))
        raw.set(store.keys.events(bad), "not a stream")
    elif fault == "not an event":
        raw.xadd(store.keys.events(bad), {"garbage": "1"})
    after = "18446744073709551616-0" if fault == "position out of range" else "0-0"

    async def scenario() -> tuple[list[Event], list[Exception], int]:
        astore = AsyncJobStore.from_settings(settings)
        reader = AsyncJobStore.from_settings(settings).redis
        # One reader: every stream shares the XREAD the bad one fails.
        hub = EventHub(reader, astore, HubTuning(readers=1, block_ms=200))
        hub.start()
        try:
            async with (
                hub.subscribe(good) as watcher,
                hub.subscribe(bad, after) as victim,
                hub.subscribe(bad, after) as other_victim,
            ):
                assert (await watcher.next(10)) is not None  # queued
                failed = await asyncio.wait_for(
                    asyncio.gather(fails(victim), fails(other_victim)), 10
                )
                store.start(good)
                for step in range(3):
                    store.progress(good, {"step": step})
                store.succeed(good, train_result())
                rest = await asyncio.wait_for(drain(watcher), 10)
                following = hub.subscribers
            return rest, list(failed), following
        finally:
            await hub.stop()
            await astore.redis.aclose()
            await reader.aclose()

    rest, failed, following = asyncio.run(scenario())
    assert rest == store.events(good)[1:]
    assert all(isinstance(exc, StreamUnreadable) for exc in failed)
    assert all(exc.details["job_id"] == bad for exc in failed)
    assert following == 1  # the good one; the bad stream is followed no more


def test_a_client_of_a_stream_redis_will_not_read_sees_it_fail_and_others_go_on(
    gateway: Gateway, store: JobStore
) -> None:
    good, bad = new_job(store), new_job(store)
    store.redis.delete(store.keys.events(bad))
    store.redis.set(store.keys.events(bad), "not a stream")
    url = f"{gateway.url}/v1/jobs/{good}/events"
    frames: list[Frame] = []
    started = threading.Event()
    follower = threading.Thread(target=follow, args=(url, frames, started))
    follower.start()
    assert started.wait(10)

    def read_to_the_end(client: httpx.Client) -> None:
        with client.stream("GET", f"/v1/jobs/{bad}/events") as response:
            assert response.status_code == 200
            list(response.iter_lines())

    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        for _ in range(3):
            # Cut off: not a clean end, which a client would take for "reconnect at once".
            with pytest.raises(httpx.RemoteProtocolError):
                read_to_the_end(client)
    run_job(store, good)
    follower.join(30)
    assert not follower.is_alive()
    assert_matches(frames, store.events(good))


# Subscribers that stop reading.


def test_a_subscriber_that_stops_reading_is_dropped_and_resumes_with_nothing_lost(
    settings: Settings, store: JobStore
) -> None:
    job_id = new_job(store)

    async def scenario() -> tuple[list[Event], list[Event], list[Event], int]:
        astore = AsyncJobStore.from_settings(settings)
        reader = AsyncJobStore.from_settings(settings).redis
        hub = EventHub(reader, astore, HubTuning(readers=1, block_ms=200, max_queued_events=5))
        hub.start()
        try:
            async with hub.subscribe(job_id) as reading, hub.subscribe(job_id) as stalled:
                seen = [await stalled.next(10)]  # queued; then it stops reading
                assert seen[0] is not None
                keeps_reading = asyncio.create_task(drain(reading))
                store.start(job_id)
                for step in range(20):
                    store.progress(job_id, {"step": step})
                    await asyncio.sleep(0.01)  # one read each: many small pushes
                for _ in range(1000):
                    if hub.subscribers == 1:
                        break
                    await asyncio.sleep(0.01)
                following = hub.subscribers
                with pytest.raises(SubscriberLagging):
                    await stalled.next(10)
                store.succeed(job_id, train_result())
                everything = await asyncio.wait_for(keeps_reading, 10)
            # It comes back after the last event it got, as a client with Last-Event-ID does.
            async with hub.subscribe(job_id, seen[-1].id) as resumed:
                rest = await asyncio.wait_for(drain(resumed), 10)
            return everything, [e for e in seen if e is not None], rest, following
        finally:
            await hub.stop()
            await astore.redis.aclose()
            await reader.aclose()

    everything, seen, rest, following = asyncio.run(scenario())
    events = store.events(job_id)
    assert everything == events
    assert seen + rest == events
    assert following == 1


def test_one_burst_is_always_taken_even_above_the_bound(settings: Settings) -> None:
    async def scenario() -> None:
        astore = AsyncJobStore.from_settings(settings)
        try:
            tuning = HubTuning(max_queued_events=2)
            subscription = Subscription(astore, tuning, "j", "0-0", None)
            burst = [Event(id=f"1-{n}", type=EventType.log, data={}) for n in range(10)]
            assert subscription.push(burst)
            assert not subscription.push(burst[:1])
            with pytest.raises(SubscriberLagging):
                await subscription.next(1)
        finally:
            await astore.redis.aclose()

    asyncio.run(scenario())


def test_a_client_too_slow_for_its_stream_is_dropped_and_reconnects_with_nothing_lost(
    settings: Settings, store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    tuning = functools.partial(HubTuning, max_queued_events=20)
    monkeypatch.setattr(gateway_services, "HubTuning", tuning)
    job_id = new_job(store)
    store.start(job_id)
    blob = "x" * 65_536
    with serve(settings.replace(sse_heartbeat_s=0.05)) as gateway:
        hub = gateway.services.hub
        assert hub.tuning.max_queued_events == 20
        url = f"{gateway.url}/v1/jobs/{job_id}/events"
        with httpx.Client(timeout=30) as client:
            with client.stream("GET", url) as response:
                lines = response.iter_lines()
                frames = events_only(read_frames(lines))
                first = [next(frames), next(frames)]  # queued, running; then it stops reading
                # Megabytes: more than the sockets between hold, so the gateway's sends wait
                # and its queue for the client fills.
                for step in range(600):
                    store.progress(job_id, {"step": step, "blob": blob})
                wait_until(lambda: hub.subscribers == 0, timeout=30)
                got = first + list(frames)  # what was on its way, then a clean end
            assert got[-1].event == "progress"
            last = got[-1].id
            assert last is not None
            store.succeed(job_id, train_result())
            with client.stream("GET", url, headers={"Last-Event-ID": last}) as response:
                rest = list(events_only(read_frames(response.iter_lines())))
    assert_matches(got + rest, store.events(job_id))


# Streams per key.

KEYS = [
    ApiKey(name="one", sha256=key_digest("key-one"), scopes=("admin",)),
    ApiKey(name="two", sha256=key_digest("key-two"), scopes=("admin",)),
]


def test_a_key_holds_at_most_its_streams_predictions_included(
    settings: Settings, store: JobStore
) -> None:
    running = new_job(store)
    store.start(running)
    prediction = new_prediction(store)
    keyed = settings.replace(api_keys=KEYS, max_streams_per_key=2, sse_heartbeat_s=0.05)
    one = {"Authorization": "Bearer key-one"}
    two = {"Authorization": "Bearer key-two"}
    with serve(keyed) as gateway, httpx.Client(base_url=gateway.url, timeout=10) as client:
        with (
            client.stream("GET", f"/v1/jobs/{running}/events", headers=one) as first,
            client.stream("GET", f"/v1/jobs/{prediction}/events", headers=one) as second,
        ):
            assert (first.status_code, second.status_code) == (200, 200)
            for url in (f"/v1/jobs/{running}/events", f"/v1/jobs/{prediction}/events"):
                refused = client.get(url, headers=one)
                assert refused.status_code == 429, refused.text
                assert refused.json()["error"]["code"] == "rate_limited"
                assert refused.json()["error"]["details"]["limit"] == "streams"
                assert int(refused.headers["Retry-After"]) >= 1
            # Another key has streams of its own.
            with client.stream("GET", f"/v1/jobs/{running}/events", headers=two) as other:
                assert other.status_code == 200
        # Closed streams give their slots back.
        wait_until(lambda: gateway.services.limits.streams.held == {})
        with client.stream("GET", f"/v1/jobs/{running}/events", headers=one) as again:
            assert again.status_code == 200
        # A refused or ended stream holds none: a job that ended streams and lets go.
        run_job(store, running)
        for _ in range(5):
            assert len(client.get(f"/v1/jobs/{running}/events", headers=one).text) > 0
        wait_until(lambda: gateway.services.limits.streams.held == {})


def test_the_open_gateway_counts_streams_per_address(settings: Settings, store: JobStore) -> None:
    running = new_job(store)
    with (
        serve(settings.replace(max_streams_per_key=1, sse_heartbeat_s=0.05)) as gateway,
        httpx.Client(base_url=gateway.url, timeout=10) as client,
        client.stream("GET", f"/v1/jobs/{running}/events") as first,
    ):
        assert first.status_code == 200
        assert client.get(f"/v1/jobs/{running}/events").status_code == 429
        assert gateway.services.limits.streams.held == {"addr:127.0.0.1": 1}


def test_stream_slots_are_counted_per_caller_and_given_back_once() -> None:
    slots = StreamSlots(2)
    give_back = [slots.take("a"), slots.take("a")]
    with pytest.raises(RateLimited) as refused:
        slots.take("a")
    assert refused.value.headers()["Retry-After"] == "5"
    slots.take("b")
    give_back[0]()
    give_back[0]()  # twice: still one slot
    assert slots.held == {"a": 1, "b": 1}
    slots.take("a")
    with pytest.raises(RateLimited):
        slots.take("a")
    give_back[1]()
    assert slots.held == {"a": 1, "b": 1}


def test_two_clients_of_one_prediction_both_get_its_answer(
    gateway: Gateway, store: JobStore
) -> None:
    job_id = new_prediction(store)
    url = f"{gateway.url}/v1/jobs/{job_id}/events"
    got: list[list[Frame]] = [[], []]
    started = [threading.Event(), threading.Event()]
    followers = [threading.Thread(target=follow, args=(url, got[n], started[n])) for n in range(2)]
    for follower in followers:
        follower.start()
    assert all(event.wait(10) for event in started)
    wait_until(lambda: gateway.services.answers.waiting == 2)
    answer(store, job_id)
    for follower in followers:
        follower.join(10)
        assert not follower.is_alive()
    assert [[frame.event for frame in frames] for frames in got] == [["status", "result"]] * 2
